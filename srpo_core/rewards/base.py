"""The reward protocol: r(x, p) = scale * <f_img(x), f_txt(p)> with L2-normalized features."""

from typing import Protocol

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Reward(Protocol):
    scale: float

    def image_features(self, images: torch.Tensor) -> torch.Tensor: ...
    def text_features(self, prompts: list[str]) -> torch.Tensor: ...
    def unknown_words(self, prompt: str) -> list[str]: ...


def preprocess(images: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Differentiable CLIP preprocessing of (B, 3, H, W) images in [0, 1]: bicubic resize of the
    shorter side to `size`, center crop, normalize. Written with torch ops (not the processor classes)
    because those work on PIL/numpy and would cut the gradient."""
    h, w = images.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        images = torch.nn.functional.interpolate(images, size=(round(h * scale), round(w * scale)),
                                                 mode="bicubic", align_corners=False, antialias=scale < 1)
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    images = images[..., top:top + size, left:left + size]
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s
