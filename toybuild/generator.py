"""Training the toy generator: a rectified-flow FluxTransformer2DModel over the toy VAE's 16x16x8 latents, with a
CLIPTextModel text encoder trained jointly, stored in the layout `FluxBackend.from_pretrained` loads.

Text path: the CLIPTextModel's `last_hidden_state` is the sequence the transformer attends to and its
`pooler_output` (the [EOS] state, which has read the whole caption) the pooled vector that modulates every block.
A first feasibility run that learned shape fed a pooled vector holding every caption slot; here the [EOS] state of a
two-layer text tower learns to hold them. Training, sampling and decoding go through srpo_core's own FluxBackend
and `evaluate.generate`, so what the build measures is what the app and the sessions run.
"""

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from srpo_core import evaluate
from srpo_core.backends import Cond, FluxBackend
from srpo_core.backends.base import vae_encode
from srpo_core.backends.flux import encode_clip_text
from srpo_core.config import RunConfig
from srpo_core.models import Models
from srpo_core.toy.judge import ContentClassifier, content_accuracy
from srpo_core.toy.render import captions, parse, render, sample_scenes, scenes_for
from srpo_core.toy.text import text_config
from srpo_core.toy.vocab import BACKGROUNDS, COLORS, SHAPES, default_prompts

from .train import cosine_adamw
from .vae import reconstruct

TEXT_WIDTH = 128
CAPTION_DROPOUT = 0.1  # the empty caption trains the unconditional velocity that classifier-free guidance needs


def make_text_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(text_config(TEXT_WIDTH, layers=2, heads=4))


def make_transformer(seed: int) -> FluxTransformer2DModel:
    """2 double + 2 single blocks, 4 heads x 32; 2x2-packed latents: 64 tokens of 32 channels."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=32, num_layers=2, num_single_layers=2,
                                  attention_head_dim=32, num_attention_heads=4, joint_attention_dim=TEXT_WIDTH,
                                  pooled_projection_dim=TEXT_WIDTH, guidance_embeds=False, axes_dims_rope=(8, 12, 12))


def samples(backend: FluxBackend, prompts: list[str], seed: int, steps: int = 20, guidance: float = 3.0) -> torch.Tensor:
    """Images in [0, 1] as the app and `eval` make them (`evaluate.generate`: prompt i from noise seed `seed + i`),
    with `steps` Euler steps at classifier-free guidance `guidance` over the toy presets' shifted grid."""
    cfg = RunConfig(backend="toy", resolution=64, sample_steps=steps, sample_guidance=guidance)
    return evaluate.generate(Models(backend, None), cfg, prompts, seed)


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, n: int, seed: int, batch: int = 256) -> tuple[torch.Tensor, list[str]]:
    """n renders -> (normalized latents (n, 8, 16, 16), captions): the generator's training set."""
    latents, texts = [], []
    for i in tqdm(range(0, n, batch), desc="encode renders", unit="batch"):
        scenes = sample_scenes(min(batch, n - i), seed + i)
        latents.append(vae_encode(vae, render(scenes)))
        texts += captions(scenes)
    return torch.cat(latents), texts


def eval_prompts() -> tuple[list[str], dict[str, torch.Tensor]]:
    """Every color x shape x background once, with their label indices."""
    prompts = default_prompts()
    labels = [parse(p)[0] for p in prompts]
    return prompts, {"shape": torch.tensor([SHAPES.index(l.shape) for l in labels]),
                     "color": torch.tensor([COLORS.index(l.color) for l in labels]),
                     "background": torch.tensor([BACKGROUNDS.index(l.background) for l in labels])}


def judge_samples(backend: FluxBackend, judge: ContentClassifier, seeds: int, guidance: float, steps: int = 20,
                  seed: int = 10**6) -> dict[str, float]:
    """Judge accuracy of `samples` for eval_prompts() x `seeds` noise seeds (seed k starts at seed + k * 1000)."""
    prompts, labels = eval_prompts()
    images = torch.cat([samples(backend, prompts, seed + 1000 * k, steps, guidance) for k in range(seeds)])
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
    training forward through torch.compile (0.59 -> 0.44 s/step at batch 64 on a 2-core CPU)."""
    latents, texts = encode_pool(vae, pool, seed)
    nets = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})
    # parameters only: the text tower's integer position_ids buffer must not be averaged (it would be truncated)
    ema = AveragedModel(nets, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
    backend = FluxBackend(transformer, vae, text_encoder, tokenizer)
    nets.requires_grad_(True)  # the backend freezes what it wraps, as a session's base; here both networks train
    if compile:  # shares the parameters; the EMA copy stays eager
        backend.denoiser = torch.compile(transformer)
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
        cond = Cond(*encode_clip_text(text_encoder, tokenizer, prompts))
        loss = (backend.velocity(s * eps + (1 - s) * x0, sigma, cond) - (eps - x0)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update_parameters(nets)
        losses.append(float(loss.detach()))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            ema.eval()
            acc = judge_samples(ema_backend(ema, vae, tokenizer), judge, 1, eval_cfg, sample_steps)
            curve.append({"step": step + 1, "loss": sum(losses[-eval_every:]) / len(losses[-eval_every:]), **acc})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
    ema.eval()
    return ema.module["transformer"], ema.module["text_encoder"], curve


def ema_backend(ema: AveragedModel, vae: AutoencoderKL, tokenizer) -> FluxBackend:
    """A backend over the EMA copies, as the app will load them (a fresh one per evaluation: its prompt cache
    holds encodings of the text tower as it was)."""
    return FluxBackend(ema.module["transformer"], vae, ema.module["text_encoder"], tokenizer)
