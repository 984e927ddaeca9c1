"""The toy world's judge, independent of the reward: measured style statistics and a content classifier.

The statistics are pure functions of images (B, 3, H, W) in [0, 1], each mapped to [0, 1] by the range
the renderer produces (RANGES: the 0.5th and 99.5th percentiles over the 4,096 renders of
`sample_scenes(4096, 5)`; values outside are clipped).
"""

from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from . import assets
from .render import gaussian_blur, luminance, parse
from .vocab import BACKGROUNDS, COLORS, SHAPES

RANGES = {"brightness": (0.252, 0.978), "saturation": (0.0675, 0.769), "detail": (0.0175, 0.1157)}
DETAIL_BLUR = 1.5  # px: keeps most of the "detailed" grating (period 8-11 px) in the residual
HEADS = {"shape": SHAPES, "color": COLORS, "background": BACKGROUNDS}


def _normalize(value: torch.Tensor, name: str) -> torch.Tensor:
    lo, hi = RANGES[name]
    return ((value - lo) / (hi - lo)).clamp(0, 1)


def raw_brightness(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean Rec. 601 luminance."""
    return luminance(images).mean((1, 2, 3))


def raw_saturation(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean HSV saturation (max - min) / max over pixels."""
    top, bottom = images.amax(1), images.amin(1)
    return ((top - bottom) / top.clamp(min=1e-6)).mean((1, 2))


def raw_detail(images: torch.Tensor) -> torch.Tensor:
    """(B,) high-frequency energy: RMS of luminance minus its Gaussian blur (sigma DETAIL_BLUR px), divided by the
    mean luminance so that lighting, which scales every pixel, does not read as detail."""
    lum = luminance(images)
    return (lum - gaussian_blur(lum, DETAIL_BLUR)).pow(2).mean((1, 2, 3)).sqrt() / lum.mean((1, 2, 3)).clamp(min=0.05)


def style_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalized brightness, saturation and detail, each (B,) in [0, 1]."""
    return {"brightness": _normalize(raw_brightness(images), "brightness"),
            "saturation": _normalize(raw_saturation(images), "saturation"),
            "detail": _normalize(raw_detail(images), "detail")}


class ContentClassifier(nn.Module, PyTorchModelHubMixin):
    """Four conv blocks (64 -> 4 px) and one linear head per label: shape, color, background."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        blocks, c_in = [], 3
        for c in widths:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(c_in, len(values)) for name, values in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> logits per head."""
        h = self.features(images * 2 - 1)
        return {name: head(h) for name, head in self.heads.items()}


@torch.no_grad()
def content_accuracy(model: ContentClassifier, images: torch.Tensor, labels: dict[str, torch.Tensor],
                     batch: int = 256) -> dict[str, float]:
    """{shape_acc, color_acc, background_acc} over images (B, 3, H, W); labels hold (B,) indices, -1 =
    unknown (skipped from that head's accuracy)."""
    model.eval()
    logits = [model(images[i:i + batch]) for i in range(0, len(images), batch)]
    out = {}
    for name in HEADS:
        predicted = torch.cat([l[name] for l in logits]).argmax(-1)
        known = labels[name] >= 0
        out[f"{name}_acc"] = float((predicted[known] == labels[name][known]).float().mean()) if known.any() else float("nan")
    return out


@torch.no_grad()
def judge_prompts(model: ContentClassifier, images: torch.Tensor, prompts: list[str]) -> tuple[dict, dict]:
    """The judge's verdict on images generated from `prompts` (one prompt per image): (per_image, unparsed).
    per_image holds (B,) tensors: brightness, saturation, detail, and shape / color / background
    correctness as 1 / 0, NaN where the prompt states no such label (outside the grammar). unparsed maps
    each prompt with words the caption grammar could not read to those words."""
    parsed = [parse(p) for p in prompts]
    model.eval()
    logits = [model(images[i:i + 256]) for i in range(0, len(images), 256)]
    out = dict(style_stats(images))
    for name, values in HEADS.items():
        stated = [getattr(labels, name) for labels, _ in parsed]
        target = torch.tensor([values.index(v) if v else -1 for v in stated])
        right = (torch.cat([l[name] for l in logits]).argmax(-1) == target).float()
        out[name] = torch.where(target >= 0, right, torch.nan)
    return out, {p: words for p, (_, words) in zip(prompts, parsed) if words}


def summary(per_image: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """judge_prompts' per-image values -> `eval`'s judge fields: shape_acc, color_acc, background_acc over
    the images whose prompt states that label (None when none does), mean brightness / saturation / detail
    and their standard deviations (<stat>_sd, for effect sizes between runs)."""
    out: dict[str, float | None] = {}
    for name in HEADS:
        known = per_image[name][~per_image[name].isnan()]
        out[f"{name}_acc"] = float(known.mean()) if len(known) else None
    for name in RANGES:
        out[name] = float(per_image[name].mean())
        out[f"{name}_sd"] = float(per_image[name].std()) if len(per_image[name]) > 1 else 0.0
    return out


def load_judge(root: Path | None = None) -> ContentClassifier:
    """The built judge (root: a build's --out; default the toy world in use), in eval mode."""
    return assets.load("judge", lambda path: ContentClassifier.from_pretrained(path).eval(), root)
