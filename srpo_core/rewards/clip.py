"""CLIP-family reward over transformers' CLIPModel (tiny CLIP, CLIP, PickScore share this code)."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPModel

from ..tokens import unknown_words
from .base import preprocess


def image_features(model: CLIPModel, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] -> L2-normalized features (B, D), differentiable in images and weights."""
    pixels = preprocess(images, model.config.vision_config.image_size)
    return torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels.to(model.dtype)).pooler_output.float(), dim=-1)


def text_features(model: CLIPModel, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompts -> L2-normalized features (len(prompts), D), differentiable in the weights."""
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=min(tokenizer.model_max_length, 77),
                    return_tensors="pt")
    out = model.get_text_features(input_ids=ids.input_ids.to(model.device), attention_mask=ids.attention_mask.to(model.device))
    return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)


class ClipReward:
    def __init__(self, model: CLIPModel, tokenizer, use_logit_scale: bool, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).requires_grad_(False).eval()
        self.tokenizer = tokenizer
        # HPS-style rewards are plain cosines; PickScore/CLIP multiply by exp(logit_scale).
        self.scale = float(model.logit_scale.exp()) if use_logit_scale else 1.0
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, use_logit_scale: bool = True, device="cpu",
                        dtype: torch.dtype = torch.float32, tokenizer: str | Path | None = None) -> "ClipReward":
        """A transformers CLIPModel directory; `tokenizer` names another directory when the model has none."""
        return cls(CLIPModel.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(tokenizer or path),
                   use_logit_scale, device)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> normalized features (B, D); gradients flow to the images."""
        return image_features(self.model, images.to(self.device))

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> normalized features (len(prompts), D); cached per prompt (the text tower is frozen)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            self._text_cache.update(zip(missing, text_features(self.model, self.tokenizer, missing)))
        return torch.stack([self._text_cache[p] for p in prompts])

    def unknown_words(self, prompt: str) -> list[str]:
        return unknown_words(self.tokenizer, prompt)
