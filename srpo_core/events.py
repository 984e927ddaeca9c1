"""The typed events a tuning session yields; the app, the CLI and the tests all consume these."""

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class Started:
    run_dir: Path
    config: dict
    derived: dict = field(default_factory=dict)


@dataclass
class StepRecord:
    """One optimizer step, as the CLI and app show it and metrics.jsonl stores it (one JSON object a line)."""
    step: int
    reward: float | None      # mean plain reward r(x0_hat, p) over the step's images and branches
    srp: float | None         # mean r(p+) - r(p-); None without control words
    sigma: float              # mean noise level the branches started from
    loss: float | None        # None when it was not finite
    grad_norm: float
    lr: float
    seconds: float
    pos_word: str = ""        # the control words this step used
    neg_word: str = ""
    replica_spread: float | None = None  # multi-process DDP only: 0 when every replica holds the same weights
    steered: bool = False     # the word lists changed at this step (word_schedule: steering or a replayed run)

    def to_dict(self) -> dict:
        """Standard JSON values: non-finite numbers become None; replica_spread only where it was measured."""
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        if row["replica_spread"] is None:
            del row["replica_spread"]
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "StepRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class StepMetrics:
    step: int
    total: int
    record: StepRecord


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
    bad_input: bool = False  # the config or an input it names was refused (the CLI exits 2, else 1)


class SessionFailed(RuntimeError):
    """A session that ended with a Failed event, raised by callers that drive one to the end (the CLI exits 1)."""


Event = Started | StepMetrics | Preview | Checkpoint | Finished | Failed
