"""Reward models behind one protocol (`base.Reward`)."""

from .base import Reward, preprocess
from .clip import ClipReward

__all__ = ["ClipReward", "Reward", "preprocess"]
