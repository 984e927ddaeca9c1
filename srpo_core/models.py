"""Build the generator backend and the reward model a config names.

Local directories load directly; a hub id downloads through huggingface_hub (with its progress
bars) only when a user asks for that model, and fails with a clear message when offline.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import Backend, FluxBackend
from .config import ConfigError, RunConfig
from .rewards import ClipReward, Reward
from .toy import tiny


@dataclass
class Models:
    backend: Backend
    reward: Reward


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available; use device=cpu or auto.")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def resolve(name: str, what: str) -> Path:
    """A local directory as is, else a hub snapshot downloaded on request."""
    if not name:
        raise ConfigError(f"{what} needs a hub id or a local directory.")
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name))
    except Exception as e:  # hub errors come in many classes (offline, gated, missing); all mean "cannot get it"
        raise ConfigError(f"cannot load {what} {name!r}: not a local directory and the download failed "
                          f"({type(e).__name__}); check the id, your network, or pass a local directory.") from None


def build(cfg: RunConfig) -> Models:
    device = pick_device(cfg.device)
    if cfg.backend == "tiny":
        parts = tiny.generator_parts()
        backend = FluxBackend(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"], device)
    else:
        backend = FluxBackend.from_pretrained(resolve(cfg.model, "model"), device)
    if cfg.reward == "tiny-clip":
        parts = tiny.reward_parts()
        reward = ClipReward(parts["model"], parts["tokenizer"], use_logit_scale=False, device=device)
    else:
        reward = ClipReward.from_pretrained(resolve(cfg.reward_model, "reward_model"), use_logit_scale=True, device=device)
    return Models(backend, reward)


def write_fixtures(out: str | Path) -> dict[str, Path]:
    """Tiny random models in the on-disk formats the real loaders read: a FluxPipeline-layout
    directory and a transformers CLIPModel directory."""
    out = Path(out)
    parts = tiny.generator_parts()
    FluxBackend(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"]).save_pretrained(out / "flux-tiny")
    r = tiny.reward_parts()
    ClipReward(r["model"], r["tokenizer"], use_logit_scale=True).save_pretrained(out / "clip-tiny")
    return {"model": out / "flux-tiny", "reward_model": out / "clip-tiny"}
