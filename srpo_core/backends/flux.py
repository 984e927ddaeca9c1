"""FLUX-family backend over diffusers' FluxTransformer2DModel + AutoencoderKL.

Latents are kept unpacked, (B, C, H, W), normalized as FLUX does: (z - shift_factor) * scaling_factor;
the 2x2 token packing happens inside `velocity`.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from transformers import AutoTokenizer, CLIPTextModel

from ..tokens import unknown_words
from .base import Cond

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


class FluxBackend:
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def __init__(self, transformer: FluxTransformer2DModel, vae: AutoencoderKL, text_encoder, tokenizer,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.transformer = transformer.to(self.device)
        self.vae = vae.to(self.device).requires_grad_(False).eval()
        self.text_encoder = text_encoder.to(self.device).requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.transformer.requires_grad_(False)
        self.denoiser = self.transformer  # the module called in `velocity`; a session may swap in a DDP wrapper
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu") -> "FluxBackend":
        """Load a FluxPipeline-layout directory (transformer/, vae/, text_encoder/, tokenizer/)."""
        path = Path(path)
        return cls(FluxTransformer2DModel.from_pretrained(path / "transformer"),
                   AutoencoderKL.from_pretrained(path / "vae"),
                   CLIPTextModel.from_pretrained(path / "text_encoder"),
                   AutoTokenizer.from_pretrained(path / "tokenizer"), device)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path / "transformer")
        self.vae.save_pretrained(path / "vae")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")

    def unknown_words(self, prompt: str) -> list[str]:
        return unknown_words(self.tokenizer, prompt)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Frozen text encoder; each prompt is encoded once and cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            out = self.text_encoder(input_ids=ids)
            for i, p in enumerate(missing):
                self._prompt_cache[p] = (out.last_hidden_state[i], out.pooler_output[i])
        embeds, pooled = zip(*(self._prompt_cache[p] for p in prompts))
        return Cond(torch.stack(embeds), torch.stack(pooled))

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.vae_scale
        return self.vae.config.latent_channels, side, side

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        """v_theta(x, sigma, c) ~ eps - x0 for unpacked latents x (B, C, H, W) and sigma (B,) in [0, 1]."""
        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        g = torch.full((b,), guidance, device=x.device, dtype=x.dtype) if self.transformer.config.guidance_embeds else None
        out = self.denoiser(hidden_states=packed, timestep=sigma.to(x.dtype).expand(b), guidance=g,
                            pooled_projections=cond.pooled.to(x.dtype), encoder_hidden_states=cond.embeds.to(x.dtype),
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, H, W) -> images (B, 3, H * s, W * s) in [0, 1], differentiable."""
        cfg = self.vae.config
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return (self.vae.decode(z.to(self.vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> normalized latents (the mode of the VAE posterior)."""
        cfg = self.vae.config
        z = self.vae.encode((images * 2 - 1).to(self.device, self.vae.dtype)).latent_dist.mode()
        return (z.float() - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def save_lora(self, directory: Path, state_dict: dict) -> Path:
        FluxPipeline.save_lora_weights(directory, transformer_lora_layers=state_dict, weight_name=LORA_WEIGHTS)
        return Path(directory) / LORA_WEIGHTS

    def load_lora(self, path: Path) -> None:
        path = Path(path)
        self.transformer.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="transformer")
