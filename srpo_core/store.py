"""Run directories: runs/<id>/ with config.json, metrics.jsonl, status.json, previews/, LoRA weights, README.md.

Every write leaves a readable directory if the process dies: metrics are appended and flushed
line by line; JSON, weights and images go to a temp file that is renamed into place.
"""

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import ConfigError, RunConfig, from_dict
from .events import StepRecord

CONFIG, METRICS, STATUS, CARD = "config.json", "metrics.jsonl", "status.json", "README.md"


@contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    return Image.fromarray((image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))


def from_pil(image: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image -> (3, R, R) in [0, 1]: center square crop, bicubic resize to resolution."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def save_image(image: torch.Tensor | Image.Image, path: Path) -> Path:
    image = to_pil(image) if torch.is_tensor(image) else image
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def check_writable(root: Path) -> Path:
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output directory {root} cannot be created ({e.strerror}); choose a writable folder.") from None
    if not os.access(root, os.W_OK):
        raise ConfigError(f"output directory {root} is not writable; choose a writable folder.")
    return root


class RunStore:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    @classmethod
    def create(cls, root: Path, cfg: RunConfig, preset: str) -> "RunStore":
        root = check_writable(root)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}"
        run_dir, n = root / stem, 1
        while True:
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
                run_dir = root / f"{stem}-{n}"
        (run_dir / "previews").mkdir()
        store = cls(run_dir)
        store.write_config(cfg)
        (run_dir / METRICS).touch()
        store.set_status("starting", step=0, preset=preset, pid=os.getpid())  # "running" from the first step on
        return store

    @property
    def name(self) -> str:
        return self.dir.name

    def write_config(self, cfg: RunConfig) -> None:
        write_json(self.dir / CONFIG, cfg.to_dict())

    def config(self) -> RunConfig:
        """The run's resolved config; a damaged config.json is a one-sentence ConfigError naming the run."""
        try:
            data = json.loads((self.dir / CONFIG).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"run {self.name} has an unreadable {CONFIG}; it is damaged (replay or delete the run).") from None
        if not isinstance(data, dict):
            raise ConfigError(f"run {self.name}'s {CONFIG} is not a JSON object of config keys; it is damaged.")
        return from_dict(data)

    def append_metrics(self, record: StepRecord) -> None:
        with open(self.dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_dict(), allow_nan=False) + "\n")
            f.flush()

    def metrics(self) -> list[StepRecord]:
        path = self.dir / METRICS
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        rows = []
        for line in lines:
            try:
                rows.append(StepRecord.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError):  # a line cut by a kill mid-write: everything before it is good
                break
        return rows

    def set_status(self, state: str, **extra) -> None:
        """Merge `extra` into status.json and set its state (starting, running, finished, stopped, failed)."""
        write_json(self.dir / STATUS, {**self.status(), "state": state, "updated": time.time(), **extra})

    def status(self) -> dict:
        try:
            return json.loads((self.dir / STATUS).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {"state": "unknown"}

    def preview_path(self, step: int) -> Path:
        return self.dir / "previews" / f"step_{step:05d}.png"

    @property
    def lora_path(self) -> Path:
        return self.dir / "pytorch_lora_weights.safetensors"

    @property
    def full_dir(self) -> Path:
        """A full fine-tune's transformer, as a diffusers model folder."""
        return self.dir / "transformer"

    def weights_path(self, cfg: RunConfig) -> Path:
        return self.full_dir if cfg.finetune == "full" else self.lora_path

    def save_weights(self, backend, cfg: RunConfig, state: dict) -> Path:
        """Write the tuned weights (LoRA file or transformer/ folder) in a scratch folder, then rename them into
        place, so they are never half-written."""
        target = self.weights_path(cfg)
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".weights-") as scratch:
            if cfg.finetune == "lora":
                os.replace(backend.save_lora(Path(scratch), state), target)
            else:
                written = backend.save_full(Path(scratch) / "new", state)
                if target.exists():  # a folder cannot be replaced in one rename: the old one leaves with the scratch
                    os.replace(target, Path(scratch) / "old")
                os.replace(written, target)
        return target

    def write_card(self, cfg: RunConfig, preset: str, summary: dict) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
        text = f"""---
library_name: diffusers
tags: [{'lora, ' if cfg.finetune == 'lora' else ''}srpo, text-to-image]
---
# {self.name}

{'LoRA' if cfg.finetune == 'lora' else 'Transformer (full fine-tune, in transformer/)'} tuned with SRPO Studio (`srpo_core`), preset `{preset}`.

| | |
|---|---|
| base model | {cfg.model or cfg.backend + ' (built in code)'} |
| reward | {cfg.reward_model or cfg.reward} |
| method | {cfg.method} (weighting: {cfg.weighting}{', inversion branch' if cfg.method == 'srpo' and cfg.inversion else ''}) |
| control words | + {', '.join(cfg.pos_words) or '-'} / - {', '.join(cfg.neg_words) or '-'} |
| steps | {cfg.steps} |
| trained | {f'LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha}' if cfg.finetune == 'lora' else 'every transformer weight'} |

## Final metrics
| metric | value |
|---|---|
{rows}

Replay: `python -m srpo_core train --preset {self.dir / CONFIG}`.
"""
        with atomic_path(self.dir / CARD) as tmp:
            tmp.write_text(text, encoding="utf-8")


def list_runs(root: Path) -> list[RunStore]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [RunStore(d) for d in sorted(root.iterdir(), reverse=True) if (d / CONFIG).is_file()]
