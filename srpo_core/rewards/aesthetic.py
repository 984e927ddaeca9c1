"""LAION aesthetic predictor v2: a linear MLP head on L2-normalized CLIP ViT-L/14 image features.

It scores images alone (1-10), so it is an evaluation metric, never a training reward here: SRP needs
r(x, p+) - r(x, p-), which an image-only score cannot form.
"""

from pathlib import Path

import torch
from torch import nn

from .openclip import load_state_dict


class AestheticHead(nn.Module):
    """768-1024-128-64-16-1 with dropouts and no activations; module indices match the released
    sac+logos+ava1-l14-linearMSE.pth keys (layers.0, .2, .4, .6, .7)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class AestheticScorer:
    def __init__(self, clip, head: AestheticHead):
        """`clip`: any reward exposing normalized `image_features` (an OpenClipReward over ViT-L-14)."""
        self.clip = clip
        self.head = head.to(clip.device).requires_grad_(False).eval()

    @classmethod
    def from_files(cls, clip, head_path: str | Path) -> "AestheticScorer":
        state = load_state_dict(Path(head_path))
        head = AestheticHead(state["layers.0.weight"].shape[1])
        head.load_state_dict(state)
        return cls(clip, head)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> aesthetic scores (B,), differentiable."""
        return self.head(self.clip.image_features(images))
