"""SD3 / SD3.5 backend over diffusers' SD3Transformer2DModel + AutoencoderKL (16 latent channels).

Prompts go through `StableDiffusion3Pipeline.encode_prompt` itself (CLIP-L + CLIP-G pooled, their
penultimate hidden states padded and stacked with T5). SD3 has no guidance embedding: guidance > 1 is
classifier-free guidance, one batch of uncond + cond. The transformer patchifies internally, so the
latents stay (B, 16, H, W), normalized as the pipeline does: (z - shift_factor) * scaling_factor.
"""

from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from ..tokens import unknown_words
from .base import Cond, DiffusersBackend, PromptCache, configure_vae, guide, place_transformer, with_uncond

MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default T5 length


class SD3Backend(DiffusersBackend):
    pipeline_class = StableDiffusion3Pipeline
    # diffusers' train_dreambooth_lora_sd3 defaults; SD3.5's second attention (attn2) shares these names
    uses_cfg = True  # guidance is classifier-free (uncond + cond batch)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def __init__(self, pipe: StableDiffusion3Pipeline, device: str | torch.device = "cpu",
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH, vae_mode: str = "full",
                 keep_prompts: list[str] | None = None):
        """With `keep_prompts` the three text encoders encode those prompts and are dropped before the transformer
        goes to the device (`free_text_encoders`)."""
        self.device = torch.device(device)
        self.pipe = pipe
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            module.to(self.device).requires_grad_(False).eval()
        self.vae = pipe.vae
        self.tokenizer = pipe.tokenizer
        self.vae_scale = pipe.vae_scale_factor
        self.vae_checkpointed = vae_mode == "checkpoint"
        configure_vae(self.vae, vae_mode)
        self.max_sequence_length = max_sequence_length
        self.encode_prompts = PromptCache(self._encode)
        if keep_prompts is not None:
            self.free_text_encoders(keep_prompts)
        self.transformer = place_transformer(pipe.transformer, self.device).requires_grad_(False)
        self.denoiser = self.transformer  # the module called in `velocity`; a session may swap in a DDP wrapper

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                        transformer: SD3Transformer2DModel | None = None, max_sequence_length: int = 0,
                        vae_mode: str = "full", keep_prompts: list[str] | None = None) -> "SD3Backend":
        """A StableDiffusion3Pipeline directory; `transformer` replaces the stored one (quantized)."""
        kw = {"transformer": transformer} if transformer is not None else {}
        pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=dtype, **kw)
        return cls(pipe, device, max_sequence_length or MAX_SEQUENCE_LENGTH, vae_mode, keep_prompts)

    def sampling_shift(self, resolution: int) -> float:
        """The scheduler's fixed shift (3.0 for SD3 / SD3.5)."""
        return float(self.pipe.scheduler.config.get("shift", 3.0))

    def unknown_words(self, prompt: str) -> list[str]:
        return unknown_words(self.tokenizer, prompt)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, None, None, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
        return embeds, pooled

    def free_text_encoders(self, keep_prompts: list[str]) -> None:
        """Encode `keep_prompts` and the empty CFG prompt once, then drop the three encoders."""
        self.encode_prompts.freeze(keep_prompts + [""])
        self.pipe.text_encoder = self.pipe.text_encoder_2 = self.pipe.text_encoder_3 = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
        """v_theta(x, sigma, c) ~ eps - x0 for latents x (B, 16, H, W) and sigma (B,) in [0, 1]; with
        guidance > 1, v = v_u + guidance * (v_c - v_u) with the empty prompt as uncond (as the pipeline does)."""
        dtype = self.transformer.dtype if x.dtype == torch.float32 else x.dtype
        if guidance > 1:
            x, sigma, cond = with_uncond(self.encode_prompts, x, sigma, cond)
        # the SD3 transformer takes the scheduler's timesteps, sigma * num_train_timesteps (1000)
        v = self.denoiser(hidden_states=x.to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
                          pooled_projections=cond.pooled.to(dtype), timestep=(sigma * 1000).to(dtype).expand(len(x)),
                          return_dict=False)[0].to(x.dtype)
        return guide(v, guidance) if guidance > 1 else v

