"""FLUX-family backend over diffusers' FluxTransformer2DModel + AutoencoderKL.

Two text layouts: the real FluxPipeline one (CLIP-L gives the pooled vector, T5 the sequence; encoded
by `FluxPipeline.encode_prompt` itself) and the tiny world's single CLIPTextModel giving both.
Latents are kept unpacked, (B, C, H, W), normalized as FLUX does: (z - shift_factor) * scaling_factor;
the 2x2 token packing happens inside `velocity`.
"""

from pathlib import Path

import torch
import math

from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from transformers import AutoTokenizer, CLIPTextModel

from ..tokens import unknown_words
from .base import Cond, DiffusersBackend, PromptCache, configure_vae, guide, place_transformer, with_uncond

MAX_SEQUENCE_LENGTH = 512  # FLUX.1-dev's T5 length (schnell uses 256)
BUILT_IN_SHIFT = 3.0  # the tiny and toy models have no scheduler; the toy generator is trained and sampled at 3


def encode_clip_text(text_encoder: CLIPTextModel, tokenizer, prompts: list[str], device: torch.device | str = "cpu"):
    """The single-CLIPTextModel layout (tiny and toy worlds): (sequence (B, T, D) = last_hidden_state, pooled (B, D)
    = the [EOS] state); differentiable, so the toy build trains its text tower through it."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    out = text_encoder(input_ids=ids)
    return out.last_hidden_state, out.pooler_output


class FluxBackend(DiffusersBackend):
    pipeline_class = FluxPipeline
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def __init__(self, transformer: FluxTransformer2DModel, vae: AutoencoderKL, text_encoder, tokenizer,
                 device: str | torch.device = "cpu", pipe: FluxPipeline | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH, vae_mode: str = "full",
                 keep_prompts: list[str] | None = None):
        """`pipe` (a FluxPipeline sharing these modules) selects the real two-encoder layout. With `keep_prompts`
        the text encoders encode those prompts and are dropped before the transformer goes to the device, so T5-XXL
        and the transformer never share GPU memory (`free_text_encoders`)."""
        self.device = torch.device(device)
        self.transformer = transformer
        self.vae = vae.to(self.device).requires_grad_(False).eval()
        self.text_encoder = text_encoder.to(self.device).requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.pipe = pipe
        if pipe is not None:
            pipe.text_encoder_2.to(self.device).requires_grad_(False).eval()
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_checkpointed = vae_mode == "checkpoint"
        configure_vae(self.vae, vae_mode)
        self.max_sequence_length = max_sequence_length
        self.encode_prompts = PromptCache(self._encode_two if pipe is not None else self._encode_one)
        if keep_prompts is not None:
            self.free_text_encoders(keep_prompts)
        self.transformer = place_transformer(transformer, self.device).requires_grad_(False)
        self.denoiser = self.transformer  # the module called in `velocity`; a session may swap in a DDP wrapper

    @property
    def uses_cfg(self) -> bool:
        """FLUX.1-dev takes guidance as an embedding input; a model trained without one (the toy generator,
        FLUX.1-schnell-like models) gets classifier-free guidance with the empty prompt instead."""
        return not self.transformer.config.guidance_embeds

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                        transformer: FluxTransformer2DModel | None = None, max_sequence_length: int = 0,
                        vae_mode: str = "full", keep_prompts: list[str] | None = None) -> "FluxBackend":
        """A FluxPipeline directory (model_index.json; text_encoder_2 = T5) or the tiny world's layout
        (transformer/, vae/, text_encoder/, tokenizer/). `transformer` replaces the stored one (quantized)."""
        path = Path(path)
        transformer = transformer or FluxTransformer2DModel.from_pretrained(path / "transformer", dtype=dtype)
        if (path / "model_index.json").is_file():
            pipe = FluxPipeline.from_pretrained(path, transformer=transformer, dtype=dtype)
            return cls(transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, device, pipe,
                       max_sequence_length or MAX_SEQUENCE_LENGTH, vae_mode, keep_prompts)
        return cls(transformer, AutoencoderKL.from_pretrained(path / "vae", dtype=dtype),
                   CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype),
                   AutoTokenizer.from_pretrained(path / "tokenizer"), device, vae_mode=vae_mode, keep_prompts=keep_prompts)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the layout this backend was loaded from (FluxPipeline's own save for the real one)."""
        if self.pipe is not None:
            self.pipe.save_pretrained(path)
            return
        path = Path(path)
        self.transformer.save_pretrained(path / "transformer")
        self.vae.save_pretrained(path / "vae")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")

    def sampling_shift(self, resolution: int) -> float:
        """The pipeline scheduler's shift: with `use_dynamic_shifting` (FLUX.1-dev) exp(mu), mu interpolated by the
        image's token count as FluxPipeline does (1.88 at 512 px, 2.22 at 720, 3.16 at 1024), else its fixed one."""
        sched = self.pipe.scheduler.config if self.pipe is not None else None
        if sched is None:
            return BUILT_IN_SHIFT
        if not sched.get("use_dynamic_shifting"):
            return float(sched.get("shift", 1.0))
        tokens = (resolution // self.vae_scale // 2) ** 2  # 2x2-packed latent patches
        return math.exp(calculate_shift(tokens, sched.get("base_image_seq_len", 256), sched.get("max_image_seq_len", 4096),
                                        sched.get("base_shift", 0.5), sched.get("max_shift", 1.15)))

    def unknown_words(self, prompt: str) -> list[str]:
        return unknown_words(self.tokenizer, prompt)

    def _encode_one(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_clip_text(self.text_encoder, self.tokenizer, prompts, self.device)

    def _encode_two(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return embeds, pooled

    def free_text_encoders(self, keep_prompts: list[str]) -> None:
        """Encode `keep_prompts` (and the empty CFG prompt) once, then drop the encoders (T5-XXL alone is 9.5 GB in bf16)."""
        self.encode_prompts.freeze(keep_prompts + ([""] if self.uses_cfg else []))
        self.text_encoder = None
        if self.pipe is not None:
            self.pipe.text_encoder = self.pipe.text_encoder_2 = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        """v_theta(x, sigma, c) ~ eps - x0 for unpacked latents x (B, C, H, W) and sigma (B,) in [0, 1];
        `guidance` feeds FLUX.1-dev's guidance embedding, or is the CFG scale of a model without one."""
        cfg = self.uses_cfg and guidance > 1
        if cfg:
            x, sigma, cond = with_uncond(self.encode_prompts, x, sigma, cond)
        b, c, h, w = x.shape
        dtype = self.transformer.dtype if x.dtype == torch.float32 else x.dtype
        packed = FluxPipeline._pack_latents(x, b, c, h, w).to(dtype)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, dtype)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=x.device, dtype=dtype)
        g = torch.full((b,), guidance, device=x.device, dtype=dtype) if self.transformer.config.guidance_embeds else None
        out = self.denoiser(hidden_states=packed, timestep=sigma.to(dtype).expand(b), guidance=g,
                            pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        v = FluxPipeline._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale).to(x.dtype)
        return guide(v, guidance) if cfg else v

