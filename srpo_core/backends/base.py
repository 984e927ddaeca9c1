"""The generator protocol every backend implements (FLUX family incl. the tiny models, SD3), and the
VAE helpers they share."""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate.utils import load_checkpoint_in_model
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError


@dataclass
class Cond:
    """Text conditioning for a batch: sequence embeddings (B, T, D) and pooled embeddings (B, P)."""
    embeds: torch.Tensor
    pooled: torch.Tensor


class Backend(Protocol):
    transformer: torch.nn.Module
    lora_targets: list[str]
    uses_cfg: bool
    device: torch.device

    def encode_prompts(self, prompts: list[str]) -> Cond: ...
    def free_text_encoders(self, keep_prompts: list[str]) -> None: ...
    def latent_shape(self, resolution: int) -> tuple[int, int, int]: ...
    def sampling_shift(self, resolution: int) -> float: ...
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...
    def unknown_words(self, prompt: str) -> list[str]: ...
    def save_lora(self, directory: Path, state_dict: dict) -> Path: ...
    def load_lora(self, path: Path) -> None: ...
    def save_full(self, directory: Path, state_dict: dict) -> Path: ...
    def load_full(self, directory: Path) -> None: ...


class PromptCache:
    """Per-prompt (embeds, pooled) of a frozen text stack; after `freeze` only cached prompts are served."""

    def __init__(self, encode):
        self._encode = encode  # list[str] -> (embeds (N, T, D), pooled (N, P))
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.frozen = False

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Cond:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing and self.frozen:
            raise ConfigError(f"prompt {missing[0]!r} was not encoded before the text encoders were freed "
                             "(free_text_encoders); add it to the prompt list or turn free_text_encoders off.")
        if missing:
            embeds, pooled = self._encode(missing)
            self._cache.update((p, (e, q)) for p, e, q in zip(missing, embeds, pooled))
        embeds, pooled = zip(*(self._cache[p] for p in prompts))
        return Cond(torch.stack(embeds), torch.stack(pooled))

    def freeze(self, keep_prompts: list[str]) -> None:
        self(keep_prompts)
        self.frozen = True


def place_transformer(transformer: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move the transformer to the device, unless bitsandbytes already placed it (quantized weights refuse .to()) or
    its weights are still to come (meta: `fullsize` fills them in place)."""
    if getattr(transformer, "is_quantized", False) or next(transformer.parameters()).device.type == "meta":
        return transformer
    return transformer.to(device)


def with_uncond(encode_prompts: PromptCache, x: torch.Tensor, sigma: torch.Tensor, cond: Cond):
    """The classifier-free guidance batch: the empty prompt's conditioning first, then `cond`; x and sigma doubled."""
    b = x.shape[0]
    uncond = encode_prompts([""] * b)
    cond = Cond(torch.cat([uncond.embeds, cond.embeds]), torch.cat([uncond.pooled, cond.pooled]))
    return torch.cat([x, x]), torch.cat([sigma.expand(b), sigma.expand(b)]), cond


def guide(v: torch.Tensor, guidance: float) -> torch.Tensor:
    """v = v_u + guidance (v_c - v_u) over a `with_uncond` batch (as diffusers' pipelines mix it)."""
    v_u, v_c = v.chunk(2)
    return v_u + guidance * (v_c - v_u)


def configure_vae(vae, mode: str) -> None:
    """Tiling / slicing are diffusers' own memory modes; 'checkpoint' is applied per call in `vae_decode`."""
    if mode == "tiled":
        vae.enable_tiling()
    elif mode == "sliced":
        vae.enable_slicing()


def vae_decode(vae, latents: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """Normalized latents (B, C, H, W) -> images in [0, 1], differentiable; with `checkpointed` the decoder's
    activations are recomputed in backward instead of kept (the reward path's largest activation at 720 px)."""
    cfg = vae.config
    z = (latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)).to(vae.dtype)
    decode = lambda z: vae.decode(z).sample  # noqa: E731
    x = checkpoint(decode, z, use_reentrant=False) if checkpointed and torch.is_grad_enabled() else decode(z)
    return (x.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] -> normalized latents (the mode of the VAE posterior)."""
    cfg = vae.config
    z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode()
    return (z.float() - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
FULL_WEIGHTS = "diffusion_pytorch_model{suffix}.safetensors"  # diffusers' names, so from_pretrained reads the folder


class DiffusersBackend:
    """What the diffusers-backed backends share: VAE decode/encode and LoRA files in the format of
    `pipeline_class.save_lora_weights`, which that pipeline's `load_lora_weights` reads back."""
    pipeline_class: type
    vae: torch.nn.Module
    vae_checkpointed: bool
    vae_scale: int
    transformer: torch.nn.Module

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.vae_scale
        return self.vae.config.latent_channels, side, side

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, H, W) -> images (B, 3, H * s, W * s) in [0, 1], differentiable."""
        return vae_decode(self.vae, latents, self.vae_checkpointed)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return vae_encode(self.vae, images)

    def save_lora(self, directory: Path, state_dict: dict) -> Path:
        # the adapter config (alpha, rank, targets) rides along: without it loaders assume alpha = rank
        self.pipeline_class.save_lora_weights(directory, transformer_lora_layers=state_dict, weight_name=LORA_WEIGHTS,
                                              transformer_lora_adapter_metadata=self.transformer.peft_config["default"].to_dict())
        return Path(directory) / LORA_WEIGHTS

    def load_lora(self, path: Path) -> None:
        """Load a LoRA file of `save_lora`'s format; one that is damaged, holds non-finite values or was made for
        another model is refused in one sentence (diffusers would skip keys it cannot place, with a warning)."""
        path = Path(path)
        try:
            state = load_file(path)
        except Exception as e:  # safetensors raises its own types for a truncated, foreign or oversized header
            raise ConfigError(f"{path.name} is not a readable safetensors LoRA file ({_first_line(e)}).") from None
        layers = {name for name, _ in self.transformer.named_modules()}
        foreign = [k for k in state if k.removeprefix("transformer.").rsplit(".lora_", 1)[0] not in layers]
        if not state or foreign:
            raise ConfigError(f"{path.name} was made for another model: "
                              f"{repr(foreign[0]) + ' matches no layer of this transformer' if foreign else 'it holds no tensors'}.")
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise ConfigError(f"{path.name} holds NaN or infinite values (a run that diverged); it cannot tune a model.")
        try:
            self.transformer.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="transformer")
        except Exception as e:  # shapes that do not fit this model's layers
            raise ConfigError(f"{path.name} does not fit this model ({_first_line(e)}).") from None

    def save_full(self, directory: Path, state_dict: dict) -> Path:
        """A whole transformer as a diffusers model folder (config.json + safetensors shards + index), which
        `from_pretrained` loads. The state dict is passed in because a sharded model's own is only a shard."""
        self.transformer.save_config(directory)
        save_torch_state_dict(state_dict, directory, filename_pattern=FULL_WEIGHTS, max_shard_size="10GB")
        return Path(directory)

    def load_full(self, directory: Path) -> None:
        """Load a `save_full` folder into the transformer in place (every key must match)."""
        single = Path(directory) / FULL_WEIGHTS.format(suffix="")
        index = single.with_name(single.name + ".index.json")  # written instead when the weights were split
        load_checkpoint_in_model(self.transformer, str(index if index.is_file() else single), strict=True)
