"""open_clip rewards: HPSv2.1 (ViT-H-14 + the HPS_v2.1_compressed.pt state dict, plain cosine) and any
open_clip CLIP checkpoint (exp(logit_scale) * cosine)."""

import pickle
from pathlib import Path

import open_clip
import torch

from ..config import ConfigError
from .base import preprocess

DEFAULT_ARCH = "ViT-H-14"  # HPSv2.1 fine-tunes open_clip's laion2b_s32b_b79k ViT-H-14

HPS_FILE = "HPS_v2.1_compressed.pt"  # the state dict of HPSv2.1 in the xswu/HPSv2 repo


def architecture(arch: str) -> str:
    """An open_clip model name, or a model-config JSON registered under its file stem (tiny test models)."""
    arch = arch or DEFAULT_ARCH
    if arch.endswith(".json"):
        if not Path(arch).is_file():
            raise ConfigError(f"reward_arch {arch} is not an existing open_clip model-config JSON file.")
        open_clip.add_model_config(arch)
        return Path(arch).stem
    if arch not in open_clip.list_models():
        raise ConfigError(f"reward_arch {arch!r} is not an open_clip architecture; pick one of open_clip.list_models() "
                          "(for example ViT-H-14, ViT-L-14) or pass a model-config JSON file.")
    return arch


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a torch pickle loaded with weights_only=True (never arbitrary code);
    HPS-style checkpoints keep them under 'state_dict'."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ConfigError(f"{path} is not a safetensors file and cannot be loaded with weights_only=True "
                          f"({str(e).splitlines()[0][:120]}); use a safetensors or plain state-dict checkpoint "
                          "from a source you trust.") from None
    return data.get("state_dict", data) if isinstance(data, dict) else data


class OpenClipReward:
    def __init__(self, model, tokenizer, use_logit_scale: bool, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).requires_grad_(False).eval()
        self.tokenizer = tokenizer
        size = model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        # HPSv2.1 scores the plain cosine (~0.29 on FLUX); CLIP-style scores multiply by exp(logit_scale)
        self.scale = float(model.logit_scale.exp()) if use_logit_scale else 1.0
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, arch: str = "", use_logit_scale: bool = False,
                        device="cpu", dtype: torch.dtype = torch.float32) -> "OpenClipReward":
        """open_clip architecture built without weights (pretrained=None, no download), then the checkpoint."""
        name = architecture(arch)
        model = open_clip.create_model(name, pretrained=None)
        model.load_state_dict(load_state_dict(Path(checkpoint)))
        return cls(model.to(dtype), open_clip.get_tokenizer(name), use_logit_scale, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> normalized features (B, D); gradients flow to the images."""
        pixels = preprocess(images.to(self.device), self.image_size)
        return torch.nn.functional.normalize(self.model.encode_image(pixels.to(self.dtype)).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> normalized features (len(prompts), D); cached per prompt (the text tower is frozen)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            f = self.model.encode_text(self.tokenizer(missing).to(self.device)).float()
            self._text_cache.update(zip(missing, torch.nn.functional.normalize(f, dim=-1)))
        return torch.stack([self._text_cache[p] for p in prompts])

    def unknown_words(self, prompt: str) -> list[str]:
        return []  # open_clip's BPE tokenizer spells every word out of sub-words
