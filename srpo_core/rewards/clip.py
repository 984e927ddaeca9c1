"""CLIP-family reward over transformers' CLIPModel (tiny CLIP, CLIP, PickScore share this code)."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPModel

from ..tokens import unknown_words
from .base import preprocess


class ClipReward:
    def __init__(self, model: CLIPModel, tokenizer, use_logit_scale: bool, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.image_size = model.config.vision_config.image_size
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
        pixels = preprocess(images.to(self.device), self.image_size)
        f = self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)).pooler_output.float()
        return torch.nn.functional.normalize(f, dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> normalized features (len(prompts), D); cached per prompt (the text tower is frozen)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=min(self.tokenizer.model_max_length, 77), return_tensors="pt")
            out = self.model.get_text_features(input_ids=ids.input_ids.to(self.device),
                                               attention_mask=ids.attention_mask.to(self.device))
            f = torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)
            self._text_cache.update(zip(missing, f))
        return torch.stack([self._text_cache[p] for p in prompts])

    def unknown_words(self, prompt: str) -> list[str]:
        return unknown_words(self.tokenizer, prompt)
