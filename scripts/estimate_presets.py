"""Memory estimates of the GPU presets without weights or a GPU: the full-size architectures are built on
torch's meta device from their published configs and passed through srpo_core.memory.estimate.
Usage: python scripts/estimate_presets.py  (prints one JSON line per preset)."""

import json

import open_clip
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from srpo_core import config, memory
from srpo_core.backends import Cond, FluxBackend, SD3Backend
from srpo_core.lora import add_lora

VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")


class Reward:  # weights only; the estimate reads `.model` (PickScore is the same CLIP ViT-H-14 in transformers)
    def __init__(self):
        with torch.device("meta"):
            self.model = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")


def meta_backend(family: str):
    """Full-size transformer and VAE on the meta device; small stand-in text encoders, freed right away as
    every GPU preset frees them once the prompts are cached."""
    with torch.device("meta"):
        vae = AutoencoderKL(**VAE, scaling_factor=0.3611 if family == "flux" else 1.5305,
                            shift_factor=0.1159 if family == "flux" else 0.0609)
        encoder = CLIPTextModelWithProjection(CLIPTextConfig(num_hidden_layers=1))
        if family == "flux":
            backend = FluxBackend(FluxTransformer2DModel(**FLUX_DEV), vae, encoder, None, "meta")
            backend.text_encoder = None
            return backend
        pipe = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**SD35_MEDIUM), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae, text_encoder=encoder, tokenizer=None, text_encoder_2=encoder, tokenizer_2=None,
            text_encoder_3=encoder, tokenizer_3=None)
    backend = SD3Backend(pipe, "meta")
    pipe.text_encoder = pipe.text_encoder_2 = pipe.text_encoder_3 = None
    return backend


def main():
    for name in ("flux-dev-24gb", "flux-dev-80gb", "flux-dev-pickscore", "sd35-medium-16gb"):
        cfg = config.load(name)
        family = "flux" if cfg.backend == "flux" else "sd3"
        backend = meta_backend(family)
        params = add_lora(backend.transformer, cfg, backend.lora_targets)
        seq = cfg.max_sequence_length or (512 if family == "flux" else 256)
        tokens = seq + (77 if family == "sd3" else 0)  # SD3 stacks the 77 CLIP tokens before T5's
        cond = Cond(torch.zeros(1, tokens, 4096), torch.zeros(1, 768 if family == "flux" else 2048))
        est = memory.estimate(backend, Reward(), cfg, cond, sum(p.numel() for p in params), torch.bfloat16)
        print(json.dumps({"preset": name, **est}))


if __name__ == "__main__":
    main()
