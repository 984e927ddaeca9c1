"""Reward models behind one protocol (`base.Reward`), plus the image-only aesthetic metric."""

from .aesthetic import AestheticHead, AestheticScorer
from .base import Reward, preprocess
from .clip import ClipReward
from .openclip import OpenClipReward

__all__ = ["AestheticHead", "AestheticScorer", "ClipReward", "OpenClipReward", "Reward", "preprocess"]
