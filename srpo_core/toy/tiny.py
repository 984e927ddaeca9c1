"""Tiny random FLUX-family generator and CLIP-style reward, built in code with fixed seeds.

Same classes and on-disk formats as the real models (diffusers FluxTransformer2DModel +
AutoencoderKL, transformers CLIPTextModel / CLIPModel, a tokenizers WordLevel tokenizer), so
every code path that serves FLUX and PickScore/CLIP runs on them in seconds on a CPU.
"""

import threading
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from .text import text_config, toy_tokenizer
from .vocab import VOCAB

WIDTH = 32
_RNG_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int):
    """Initialize weights from `seed` without touching the caller's RNG state. The lock is there because
    module constructors draw from torch's one global generator: two builds in two threads would interleave."""
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def generator_parts(seed: int = 0) -> dict:
    """Random tiny FLUX-family components: 32x32 images -> 4x16x16 latents -> 64 tokens."""
    with seeded(seed):
        return {
            "transformer": FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=WIDTH, pooled_projection_dim=WIDTH,
                guidance_embeds=False, axes_dims_rope=(4, 6, 6)),
            "vae": AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                layers_per_block=1, norm_num_groups=8, sample_size=32),
            "text_encoder": CLIPTextModel(text_config(WIDTH, layers=1, heads=2)),
            "tokenizer": toy_tokenizer(),
        }


def reward_parts(seed: int = 1) -> dict:
    """Random tiny CLIP (transformers CLIPModel, 32x32 input, 8x8 patches) and its tokenizer."""
    config = CLIPConfig(
        text_config=text_config(WIDTH, layers=1, heads=2).to_dict(),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=WIDTH),
        projection_dim=WIDTH)
    with seeded(seed):
        return {"model": CLIPModel(config), "tokenizer": toy_tokenizer()}


def _t5(seed: int):
    from transformers import T5Config, T5EncoderModel
    with seeded(seed):
        return T5EncoderModel(T5Config(vocab_size=len(VOCAB), d_model=WIDTH, d_kv=16, d_ff=2 * WIDTH, num_layers=1,
                                       num_heads=2, feed_forward_proj="gated-gelu", pad_token_id=VOCAB["[PAD]"],
                                       eos_token_id=VOCAB["[EOS]"], decoder_start_token_id=VOCAB["[PAD]"]))


def flux_pipeline(seed: int = 0):
    """A tiny FluxPipeline in the real layout: CLIP-L stand-in (pooled), T5 stand-in (sequence), guidance embedding."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    parts = generator_parts(seed)
    with seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=WIDTH, pooled_projection_dim=WIDTH, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
                        text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], text_encoder_2=_t5(seed),
                        tokenizer_2=toy_tokenizer(), transformer=transformer)


def sd3_pipeline(seed: int = 0):
    """A tiny StableDiffusion3Pipeline with SD3.5's features (16-channel VAE without quant convs, dual attention,
    RMS qk-norm): CLIP-L and CLIP-G stand-ins (16 + 16 = 32-d pooled), T5 stand-in (32-d sequence)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection
    with seeded(seed):
        half = WIDTH // 2
        clip_config = CLIPTextConfig(**{**text_config(WIDTH, layers=1, heads=2).to_dict(), "hidden_size": half, "projection_dim": half,
                                        "intermediate_size": WIDTH, "num_hidden_layers": 2})
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(
                sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                joint_attention_dim=WIDTH, caption_projection_dim=WIDTH, pooled_projection_dim=WIDTH, out_channels=16,
                pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm"),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=16,
                layers_per_block=1, norm_num_groups=8, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=CLIPTextModelWithProjection(clip_config), tokenizer=toy_tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(clip_config), tokenizer_2=toy_tokenizer(),
            text_encoder_3=_t5(seed), tokenizer_3=toy_tokenizer())


# An open_clip architecture config (the format of open_clip/model_configs/ViT-H-14.json) that stands in for
# ViT-H-14 in HPS-format fixtures; its text tower keeps open_clip's BPE vocabulary so get_tokenizer works offline.
OPEN_CLIP_TINY = {
    "embed_dim": WIDTH,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": WIDTH, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 1},
}
