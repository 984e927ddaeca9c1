"""Generator backends behind one protocol (`base.Backend`)."""

from .base import Backend, Cond
from .flux import FluxBackend

__all__ = ["Backend", "Cond", "FluxBackend"]
