"""Tiny random models built in code with fixed seeds, and `write_fixtures`, which stores them in the on-disk formats
of the real ones (`python -m srpo_core fixtures --out DIR`).

Same classes and formats as the real models (diffusers FluxTransformer2DModel + AutoencoderKL, FluxPipeline,
StableDiffusion3Pipeline, transformers CLIPTextModel / CLIPModel, an open_clip checkpoint in HPSv2.1's layout, a
tokenizers WordLevel tokenizer), so every code path that serves FLUX, SD3, HPSv2.1 and PickScore/CLIP runs on them in
seconds on a CPU.
"""

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from .backends import FluxBackend
from .rewards import ClipReward
from .rewards.openclip import HPS_FILE
from .rewards.openclip import architecture as open_clip_architecture
from .toy.text import text_config, toy_tokenizer
from .toy.vocab import VOCAB

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
    # FLUX.1-dev's published scheduler configuration: a resolution-dependent shift
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=parts["vae"],
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


def write_fixtures(out: str | Path) -> dict[str, Path]:
    """Tiny random models in the on-disk formats the real loaders read, and one preset per backend x reward
    under out/presets/ pointing at them. Returns the paths by name (`model` / `reward_model`: the tiny
    world's FLUX layout and a transformers CLIP, kept for older callers)."""
    out = Path(out).resolve()
    parts = generator_parts()
    FluxBackend(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"]).save_pretrained(out / "flux-tiny")
    flux_pipeline().save_pretrained(out / "flux-pipeline-tiny")
    sd3_pipeline().save_pretrained(out / "sd3-pipeline-tiny")
    r = reward_parts()
    ClipReward(r["model"], r["tokenizer"], use_logit_scale=True).save_pretrained(out / "clip-tiny")
    ClipReward(r["model"], r["tokenizer"], use_logit_scale=True).save_pretrained(out / "pickscore-tiny")
    from transformers import CLIPImageProcessor  # PickScore's repo carries a processor config beside the model
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out / "pickscore-tiny")
    arch = out / "open-clip-tiny.json"
    arch.write_text(json.dumps(OPEN_CLIP_TINY, indent=2))
    import open_clip
    name = open_clip_architecture(str(arch))
    (out / "hps-tiny").mkdir(parents=True, exist_ok=True)
    with seeded(2):
        model = open_clip.create_model(name, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, out / "hps-tiny" / HPS_FILE)
    paths = {"model": out / "flux-tiny", "reward_model": out / "clip-tiny", "flux": out / "flux-pipeline-tiny",
             "sd3": out / "sd3-pipeline-tiny", "hpsv2.1": out / "hps-tiny" / HPS_FILE,
             "pickscore": out / "pickscore-tiny", "clip": out / "clip-tiny", "open_clip_arch": arch}
    paths.update(write_fixture_presets(out, paths))
    return paths


def write_fixture_presets(out: Path, paths: dict[str, Path]) -> dict[str, Path]:
    """presets/<backend>-<reward>.yaml: a 2-step SRPO session on the fixtures with the reference's
    knobs scaled down (rollout steps, resolution, T5 length)."""
    rewards = {"hpsv2.1": {"reward_model": str(paths["hpsv2.1"]), "reward_arch": str(paths["open_clip_arch"])},
               "openclip": {"reward_model": str(paths["hpsv2.1"]), "reward_arch": str(paths["open_clip_arch"])},
               "pickscore": {"reward_model": str(paths["pickscore"])},
               "clip": {"reward_model": str(paths["clip"])}}
    written = {}
    (out / "presets").mkdir(exist_ok=True)
    for backend in ("flux", "sd3"):
        for reward, extra in rewards.items():
            preset = {"backend": backend, "model": str(paths[backend]), "reward": reward, **extra, "method": "srpo",
                      "steps": 2, "rollout_steps": 2, "resolution": 32, "max_sequence_length": 16,
                      **{f"{use}_guidance": 3.5 if backend == "flux" else 2.0 for use in ("rollout", "train", "sample")},
                      "sample_steps": 2, "pos_words": ["Detailed"],
                      "neg_words": ["Smooth"], "preview_every": 0, "prompts": ["a red circle on sky"]}
            path = out / "presets" / f"{backend}-{reward}.yaml"
            path.write_text(f"# Tiny fixture preset: {backend} generator, {reward} reward (srpo_core fixtures).\n"
                            + yaml.safe_dump(preset, sort_keys=False))
            written[f"preset:{backend}-{reward}"] = path
    return written
