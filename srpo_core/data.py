"""What a session trains on: its prompt list (config, prompts file or the backend's built-in list) and, in
offline mode, a folder of real images."""

from pathlib import Path

import torch
from PIL import Image

from .config import ConfigError, RunConfig
from .store import from_pil
from .toy.vocab import default_prompts, train_prompts

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def read_prompts_file(path: str | Path) -> list[str]:
    """A UTF-8 text file, one prompt a line (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"prompts file {path} is not UTF-8 text; save it as UTF-8, one prompt a line.") from None
    except OSError as e:
        raise ConfigError(f"cannot read prompts file {path} ({e.strerror}).") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts file {path} has no prompts; write one prompt a line.")
    return prompts


def training_prompts(cfg: RunConfig) -> list[str]:
    if cfg.prompts_file:
        return read_prompts_file(cfg.prompts_file)
    return cfg.prompts or (train_prompts() if cfg.backend == "toy" else default_prompts())


def kept_prompts(cfg: RunConfig, prompts: list[str]) -> list[str]:
    """What a session encodes before freeing the text encoders: its prompts and its preview prompt."""
    return prompts + [cfg.preview_prompt or prompts[0]]


def load_images(folder: str | Path, resolution: int) -> torch.Tensor:
    """Every image in a folder, center-cropped and resized to resolution: (N, 3, R, R) in [0, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"images_dir {folder} is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"images_dir {folder} holds no images (allowed: {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return torch.stack([from_pil(Image.open(p), resolution) for p in files])
