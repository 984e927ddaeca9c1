"""Generator backends behind one protocol (`base.Backend`)."""

from .base import Backend, Cond
from .flux import FluxBackend
from .sd3 import SD3Backend

__all__ = ["Backend", "Cond", "FluxBackend", "SD3Backend"]
