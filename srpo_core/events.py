"""The typed events a tuning session yields; the app, the CLI and the tests all consume these."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Started:
    run_dir: Path
    config: dict
    derived: dict = field(default_factory=dict)


@dataclass
class StepMetrics:
    step: int
    total: int
    metrics: dict


@dataclass
class Preview:
    step: int
    path: Path


@dataclass
class Checkpoint:
    step: int
    path: Path


@dataclass
class Finished:
    run_dir: Path
    summary: dict
    stopped: bool = False


@dataclass
class Failed:
    error: str
    run_dir: Path | None = None


Event = Started | StepMetrics | Preview | Checkpoint | Finished | Failed
