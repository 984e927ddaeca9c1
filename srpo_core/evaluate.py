"""Inference-side operations shared by the CLI and the app: sample, recover, score, eval."""

import math
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.utils import make_grid

from . import direct_align as da
from . import methods, srp
from .config import MAX_SEED, ConfigError, RunConfig
from .models import Models, build
from .store import CONFIG, RunStore


def require_prompt(prompt: str) -> str:
    if not prompt or not prompt.strip():
        raise ConfigError("prompt is empty; give a non-empty text prompt.")
    return prompt.strip()


def load_models(cfg: RunConfig, tuned_run: str | Path | None = None) -> Models:
    """Build the config's models and, if given, load a run's tuned weights (LoRA or full) into the generator."""
    models = build(cfg)
    if tuned_run:
        attach_tuned(models, cfg, tuned_run)
    return models


def attach_tuned(models: Models, cfg: RunConfig, run_dir: str | Path) -> None:
    store = RunStore(Path(run_dir))
    if not (store.dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (it has no {CONFIG}).")
    run_cfg = store.config()
    weights = store.weights_path(run_cfg)
    if not weights.exists():
        raise ConfigError(f"{run_dir} is not a run directory with tuned weights ({weights.name} missing).")
    if (run_cfg.backend, run_cfg.model) != (cfg.backend, cfg.model):
        raise ConfigError(f"run {store.name} was tuned on backend={run_cfg.backend} model={run_cfg.model or '-'}, "
                          f"not on this preset's backend={cfg.backend} model={cfg.model or '-'}.")
    if run_cfg.finetune == "full":
        models.backend.load_full(weights)
    else:
        models.backend.load_lora(weights)


def _ctx(models: Models, cfg: RunConfig) -> methods.Context:
    return methods.Context(models.backend, models.reward, cfg)


def generate(models: Models, cfg: RunConfig, prompts: list[str], seed: int) -> torch.Tensor:
    """Images (B, 3, R, R) in [0, 1]: no-grad rollouts, prompt i with noise seed `seed + i`."""
    check_seed(seed, len(prompts))
    ctx = _ctx(models, cfg)
    noise = torch.cat([ctx.noise(1, torch.Generator().manual_seed(seed + i)) for i in range(len(prompts))])
    with torch.no_grad():
        return models.backend.decode(methods.sample(ctx, models.backend.encode_prompts(prompts), noise))


def check_seed(seed: int, images: int = 1) -> None:
    if not 0 <= seed <= MAX_SEED - images:
        raise ConfigError(f"seed must be an integer in 0..{MAX_SEED - images} (got {seed}).")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]: per image over (C, H, W), averaged over a leading batch dimension if any
    (capped at 100 dB for identical images)."""
    a, b = (a[None], b[None]) if a.dim() == 3 else (a, b)
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def parse_sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"sigmas must be comma-separated numbers in (0, 1) (got {text!r}).") from None
    if not sigmas or any(not 0 < s < 1 for s in sigmas):
        raise ConfigError(f"sigmas must be comma-separated numbers strictly between 0 and 1 (got {text!r}).")
    return sigmas


@torch.no_grad()
def recover(models: Models, cfg: RunConfig, prompt: str, seed: int, sigmas: list[float]) -> tuple[dict, torch.Tensor]:
    """Per-timestep recoveries of one clean sample: noisy state, one-step x0, Direct-Align x0_hat.

    Returns the PSNR table (dB against the decoded clean sample) and a grid image (3, H, W) whose
    rows are noisy / one-step / Direct-Align and whose columns follow `sigmas`.
    """
    check_seed(seed)
    ctx, backend = _ctx(models, cfg), models.backend
    cond = backend.encode_prompts([require_prompt(prompt)])
    eps = ctx.noise(1, torch.Generator().manual_seed(seed))
    x0 = methods.rollout(ctx, cond, eps)  # as in training: the rollout's own noise is the one injected
    clean, ds = backend.decode(x0), cfg.dsigma
    rows = {"noisy": [], "one_step": [], "direct_align": []}
    out = {"sigmas": sigmas, "dsigma": ds, "direct_align_psnr": [], "one_step_psnr": [],
           "predicted_gap_db": [], "latent_gap_db": []}
    for s in sigmas:
        sigma = torch.tensor([s], device=x0.device)
        x = da.inject(x0, eps, sigma)
        v = ctx.velocity(x, sigma, cond, cfg.train_guidance)
        naive = da.one_step_x0(x, v, sigma)
        hat = da.recover(da.euler_step(x, v, sigma, sigma - ds), eps, sigma - ds)
        images = backend.decode(torch.cat([x, naive, hat]))
        for key, img in zip(rows, images):
            rows[key].append(img)
        out["one_step_psnr"].append(psnr(images[1], clean[0]))
        out["direct_align_psnr"].append(psnr(images[2], clean[0]))
        out["predicted_gap_db"].append(-20 * math.log10(da.predicted_error_factor(s, ds)))
        out["latent_gap_db"].append(20 * math.log10(float((naive - x0).norm() / (hat - x0).norm())))
    grid = make_grid(torch.stack([img for key in rows for img in rows[key]]), nrow=len(sigmas), padding=2, pad_value=1.0)
    return out, grid


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"image file {path} does not exist.")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError):
        raise ConfigError(f"{path} is not an image PIL can read (PNG, JPEG, WebP, ...).") from None
    return image


@torch.no_grad()
def image_scores(models: Models, images: torch.Tensor, prompt: str, pos: str, neg: str) -> torch.Tensor:
    """Per image (B, 3): r(p), r(p+), r(p-) of images (B, 3, H, W)."""
    reward = models.reward
    f = reward.image_features(images)
    t = reward.text_features([prompt, srp.augment(prompt, pos), srp.augment(prompt, neg)]).to(f.device)
    return torch.stack([srp.plain(f, ti.expand_as(f), reward.scale) for ti in t], dim=1).float().cpu()


def score(models: Models, images: torch.Tensor, prompt: str, pos: str, neg: str) -> dict:
    """r(p), r(p+), r(p-) and SRP = r(p+) - r(p-) of images (B, 3, H, W); means over the batch."""
    prompt = require_prompt(prompt)
    r, rp, rn = image_scores(models, images, prompt, pos, neg).mean(0).tolist()
    return {"reward": r, "reward_pos": rp, "reward_neg": rn, "srp": rp - rn,
            "unknown_words": sorted(set(models.reward.unknown_words(f"{pos} {neg} {prompt}")))}


def evaluate(models: Models, cfg: RunConfig, prompts: list[str], seeds: int, keep_images: bool = False) -> dict:
    """Mean plain and SRP reward over prompts x seeds (image i of every prompt from noise seed cfg.seed + i), with
    the first control words of the config; on the toy world also the judge's verdict (`judge`: shape_acc,
    color_acc, background_acc, brightness, saturation, detail) and the prompt words it could not parse. With
    `keep_images`, also the images (prompt-major) and per image its `rewards` and `srps`."""
    scores, images = [], []
    pos, neg = (words[0] if words else "" for words in (cfg.pos_words, cfg.neg_words))
    for prompt in prompts:
        batch = generate(models, cfg, [require_prompt(prompt)] * seeds, cfg.seed)
        scores.append(image_scores(models, batch, prompt, pos, neg))
        images.append(batch)
    per_image = torch.cat(scores)
    out = {"n": len(per_image), "reward_mean": float(per_image[:, 0].mean()),
           "srp_mean": float((per_image[:, 1] - per_image[:, 2]).mean())}
    if models.judge is not None:
        out.update(judge_images(models, torch.cat(images), [p for p in prompts for _ in range(seeds)]))
    if keep_images:
        out.update(images=torch.cat(images), rewards=per_image[:, 0].tolist(),
                   srps=(per_image[:, 1] - per_image[:, 2]).tolist())
    return out


def judge_images(models: Models, images: torch.Tensor, prompts: list[str]) -> dict:
    """The toy world's judge on images from `prompts`: {"judge": `eval`'s judge fields, "unparsed": {prompt: words}}."""
    from .toy import judge
    per_image, unparsed = judge.judge_prompts(models.judge, images.to("cpu"), prompts)
    return {"judge": judge.summary(per_image), "unparsed": unparsed}
