"""The toy generator: a rectified-flow FluxTransformer2DModel over the toy VAE's 16x16x8 latents, with a
CLIPTextModel text encoder trained jointly, stored in the layout `FluxBackend.from_pretrained` loads.

Text path: the CLIPTextModel's `last_hidden_state` is the sequence the transformer attends to and its
`pooler_output` (the [EOS] state, which has read the whole caption) the pooled vector that modulates
every block. TOYWORLD_NOTES' run that learned shape fed a pooled vector holding every caption slot; here
the [EOS] state of a two-layer text tower learns to hold them. `velocity` mirrors the backend's (the
tests check they agree) so that training, sampling here and tuning there see one model.
"""

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from ..schedule import sampling_sigmas
from .judge import ContentClassifier, content_accuracy
from .render import captions, parse, render, sample_scenes, scenes_for
from .text import text_config, token_ids
from .train import cosine_adamw
from .vae import reconstruct
from .vocab import BACKGROUNDS, COLORS, SHAPES, default_prompts

TEXT_WIDTH = 128
CAPTION_DROPOUT = 0.1  # the empty caption trains the unconditional velocity that classifier-free guidance needs
SHIFT = 3.0  # the sampling time shift RunConfig uses by default


def make_text_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(text_config(TEXT_WIDTH, layers=2, heads=4))


def make_transformer(seed: int) -> FluxTransformer2DModel:
    """2 double + 2 single blocks, 4 heads x 32; 2x2-packed latents: 64 tokens of 32 channels."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=32, num_layers=2, num_single_layers=2,
                                  attention_head_dim=32, num_attention_heads=4, joint_attention_dim=TEXT_WIDTH,
                                  pooled_projection_dim=TEXT_WIDTH, guidance_embeds=False, axes_dims_rope=(8, 12, 12))


def encode_text(text_encoder: CLIPTextModel, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (sequence (B, T, D), pooled (B, D)), as the backend encodes the tiny layout."""
    out = text_encoder(input_ids=token_ids(tokenizer, prompts))
    return out.last_hidden_state, out.pooler_output


def velocity(transformer: FluxTransformer2DModel, x: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor,
             pooled: torch.Tensor) -> torch.Tensor:
    """v_theta(x, sigma, c) ~ eps - x0 for latents x (B, C, H, W) and sigma (B,) in [0, 1] (the transformer
    scales the timestep by 1000 itself)."""
    b, c, h, w = x.shape
    out = transformer(hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=sigma, guidance=None,
                      pooled_projections=pooled, encoder_hidden_states=embeds,
                      txt_ids=torch.zeros(embeds.shape[1], 3), img_ids=FluxPipeline._prepare_latent_image_ids(
                          b, h // 2, w // 2, x.device, x.dtype), return_dict=False)[0]
    scale = 4  # the VAE's downsampling: _unpack_latents works in pixel units
    return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)


@torch.no_grad()
def sample(transformer, text_encoder, tokenizer, prompts: list[str], seed: int, steps: int = 20,
           cfg: float = 1.0, latent_shape=(8, 16, 16)) -> torch.Tensor:
    """Euler sampling over the shifted grid from seeded noise; cfg > 1 mixes in the empty prompt's
    velocity, v = v_u + cfg (v_c - v_u). Returns normalized latents (B, C, H, W)."""
    x = torch.randn(len(prompts), *latent_shape, generator=torch.Generator().manual_seed(seed))
    embeds, pooled = encode_text(text_encoder, tokenizer, prompts)
    if cfg != 1:
        e_u, p_u = encode_text(text_encoder, tokenizer, [""])
        embeds, pooled = torch.cat([embeds, e_u.expand_as(embeds)]), torch.cat([pooled, p_u.expand_as(pooled)])
    sigmas = sampling_sigmas(steps, SHIFT)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        xs = torch.cat([x, x]) if cfg != 1 else x
        v = velocity(transformer, xs, s.expand(len(xs)), embeds, pooled)
        if cfg != 1:
            v_c, v_u = v.chunk(2)
            v = v_u + cfg * (v_c - v_u)
        x = x + (s_next - s) * v
    return x


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Normalized latents -> images in [0, 1] (the backend's normalization: z / scaling + shift)."""
    z = latents / vae.config.scaling_factor + vae.config.shift_factor
    return (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, n: int, seed: int, batch: int = 256) -> tuple[torch.Tensor, list[str]]:
    """n renders -> (normalized latents (n, 8, 16, 16), captions): the generator's training set."""
    latents, texts = [], []
    for i in tqdm(range(0, n, batch), desc="encode renders", unit="batch"):
        scenes = sample_scenes(min(batch, n - i), seed + i)
        z = vae.encode(render(scenes) * 2 - 1).latent_dist.mode()
        latents.append((z - vae.config.shift_factor) * vae.config.scaling_factor)
        texts += captions(scenes)
    return torch.cat(latents), texts


def eval_prompts() -> tuple[list[str], dict[str, torch.Tensor]]:
    """Every color x shape x background once, with their label indices."""
    prompts = default_prompts()
    labels = [parse(p)[0] for p in prompts]
    return prompts, {"shape": torch.tensor([SHAPES.index(l.shape) for l in labels]),
                     "color": torch.tensor([COLORS.index(l.color) for l in labels]),
                     "background": torch.tensor([BACKGROUNDS.index(l.background) for l in labels])}


@torch.no_grad()
def judge_samples(transformer, text_encoder, tokenizer, vae, judge: ContentClassifier, seeds: int, cfg: float,
                  steps: int = 20, seed: int = 10**6) -> dict[str, float]:
    """Judge accuracy of generated images (`steps` Euler steps) for eval_prompts() x `seeds` noise seeds."""
    prompts, labels = eval_prompts()
    images = torch.cat([decode(vae, sample(transformer, text_encoder, tokenizer, prompts, seed + k, steps, cfg))
                        for k in range(seeds)])
    return content_accuracy(judge, images, {k: v.repeat(seeds) for k, v in labels.items()})


def judge_ceiling(vae: AutoencoderKL, judge: ContentClassifier, seed: int = 10**6) -> dict[str, float]:
    """Judge accuracy on VAE reconstructions of renders of eval_prompts(): the most generated images can score."""
    prompts, labels = eval_prompts()
    return content_accuracy(judge, reconstruct(vae, render(scenes_for([parse(p)[0] for p in prompts], seed))), labels)


def train_generator(transformer: FluxTransformer2DModel, text_encoder: CLIPTextModel, tokenizer, vae: AutoencoderKL,
                    judge: ContentClassifier, steps: int, seed: int, pool: int, batch: int = 64, lr: float = 1.2e-3,
                    ema_decay: float = 0.995, eval_every: int = 500, eval_cfg: float = 3.0, sample_steps: int = 20,
                    compile: bool = False):
    """Rectified flow (x_s = s eps + (1 - s) x0, target eps - x0, logit-normal s) on a pool of encoded
    renders, with caption dropout, warm-up + cosine lr, grad clip 1 and an EMA of both networks.
    Returns (EMA transformer, EMA text encoder, curve); the curve holds the loss and the judge's
    accuracy on samples of the EMA model (cfg `eval_cfg`, one seed per eval prompt). `compile` runs the
    training forward through torch.compile (0.59 -> 0.44 s/step at batch 64 on this 2-core CPU)."""
    latents, texts = encode_pool(vae, pool, seed)
    nets = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})
    # parameters only: the text tower's integer position_ids buffer must not be averaged (it would be truncated)
    ema = AveragedModel(nets, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
    forward = torch.compile(transformer) if compile else transformer  # shares the parameters; the EMA copy stays eager
    optimizer, schedule = cosine_adamw(nets.parameters(), lr, steps, warmup=max(steps // 25, 1), weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    curve, losses = [], []
    bar = tqdm(range(steps), desc="generator", unit="step")
    for step in bar:
        nets.train()
        idx = torch.randint(len(latents), (batch,), generator=g)
        keep = torch.rand(batch, generator=g) >= CAPTION_DROPOUT
        prompts = [texts[i] if k else "" for i, k in zip(idx.tolist(), keep.tolist())]
        x0 = latents[idx]
        sigma = torch.sigmoid(torch.randn(batch, generator=g))
        eps = torch.randn(x0.shape, generator=g)
        s = sigma[:, None, None, None]
        embeds, pooled = encode_text(text_encoder, tokenizer, prompts)
        loss = (velocity(forward, s * eps + (1 - s) * x0, sigma, embeds, pooled) - (eps - x0)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update_parameters(nets)
        losses.append(float(loss.detach()))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            ema.eval()
            acc = judge_samples(ema.module["transformer"], ema.module["text_encoder"], tokenizer, vae, judge, 1, eval_cfg,
                                sample_steps)
            curve.append({"step": step + 1, "loss": sum(losses[-eval_every:]) / len(losses[-eval_every:]), **acc})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
    ema.eval()
    return ema.module["transformer"], ema.module["text_encoder"], curve
