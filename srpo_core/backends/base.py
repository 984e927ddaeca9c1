"""The generator protocol every backend implements (tiny, FLUX-family; SD3 later)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass
class Cond:
    """Text conditioning for a batch: sequence embeddings (B, T, D) and pooled embeddings (B, P)."""
    embeds: torch.Tensor
    pooled: torch.Tensor


class Backend(Protocol):
    transformer: torch.nn.Module
    lora_targets: list[str]
    device: torch.device

    def encode_prompts(self, prompts: list[str]) -> Cond: ...
    def latent_shape(self, resolution: int) -> tuple[int, int, int]: ...
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...
    def unknown_words(self, prompt: str) -> list[str]: ...
    def save_lora(self, directory: Path, state_dict: dict) -> Path: ...
    def load_lora(self, path: Path) -> None: ...
