"""Loss recipes over a backend and a reward: SRPO, Direct-Align, ReFL, DRaFT-K.

Each recipe is a generator of `Branch`es for one micro-batch; the session backpropagates each
branch as it arrives, so only one branch's graph is alive at a time (the reference's
"2 accumulation steps, one per branch").
"""

from dataclasses import dataclass

import torch

from . import direct_align as da
from . import srp
from .backends import Backend, Cond
from .config import RunConfig
from .rewards import Reward
from .schedule import dsigma_cells, sampling_sigmas, train_sigmas


@dataclass
class Context:
    """What every recipe reads: models, config and the derived sigma grids."""
    backend: Backend
    reward: Reward
    cfg: RunConfig
    clean_bank: torch.Tensor | None = None  # offline mode: VAE latents of real images
    # FSDP2 keeps the weights it all-gathers in a rollout for the next forward, and inference tensors may never
    # enter autograd: sharded sessions roll out under no_grad instead
    inference_mode: bool = True

    def __post_init__(self):
        lo, hi = self.cfg.train_sigma_range
        dev = self.backend.device
        self.grid = train_sigmas(lo, hi, self.cfg.train_grid_len).to(dev)
        self.cells = dsigma_cells(self.cfg.train_grid_len, self.cfg.groundtruth_ratio)
        self.sample_grid = sampling_sigmas(self.cfg.rollout_steps, self.cfg.shift).to(dev)

    def velocity_fn(self, cond: Cond):
        return lambda x, s: self.backend.velocity(x, s, cond, self.cfg.guidance)

    def noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        shape = (n, *self.backend.latent_shape(self.cfg.resolution))
        return torch.randn(shape, generator=gen).to(self.backend.device)


@dataclass
class MicroBatch:
    prompts: list[str]
    pos_word: str
    neg_word: str
    gen: torch.Generator  # CPU generator: the same draws on every device


@dataclass
class Branch:
    loss: torch.Tensor     # scalar, already divided by the number of branches
    reward: torch.Tensor   # (B,) plain reward r(x0_hat, p), detached
    srp: torch.Tensor      # (B,) r(x0_hat, p+) - r(x0_hat, p-), detached (nan without control words)
    sigma: torch.Tensor    # (B,) noise level the gradient came from


def sample(ctx: Context, cond: Cond, noise: torch.Tensor) -> torch.Tensor:
    """Euler rollout of the current model from pure noise to clean latents, under inference mode (no autograd
    bookkeeping at all; no_grad in sharded sessions, see Context.inference_mode); the result is only ever a
    constant input to the losses."""
    with torch.inference_mode() if ctx.inference_mode else torch.no_grad():
        return da.euler_rollout(ctx.velocity_fn(cond), noise, ctx.sample_grid)


def clean_latents(ctx: Context, mb: MicroBatch, cond: Cond) -> torch.Tensor:
    """x0 for Direct-Align: a rollout of the model being tuned, or real images (offline mode)."""
    if ctx.clean_bank is not None:
        idx = torch.randint(len(ctx.clean_bank), (len(mb.prompts),), generator=mb.gen)
        return ctx.clean_bank[idx.to(ctx.clean_bank.device)]
    return sample(ctx, cond, ctx.noise(len(mb.prompts), mb.gen))


def _score(ctx: Context, mb: MicroBatch, latents: torch.Tensor):
    """Decode with gradients; return image features and the (p, p+, p-) text features."""
    f = ctx.reward.image_features(ctx.backend.decode(latents))
    words = bool(mb.pos_word and mb.neg_word)
    texts = mb.prompts + ([srp.augment(p, mb.pos_word) for p in mb.prompts] +
                          [srp.augment(p, mb.neg_word) for p in mb.prompts] if words else [])
    t = ctx.reward.text_features(texts).to(f.device).split(len(mb.prompts))
    return f, t[0], (t[1], t[2]) if words else None


def _branch(ctx, f, t, pair, objective, sigma, n_branches) -> Branch:
    scale = ctx.reward.scale
    with torch.no_grad():
        reward = srp.plain(f, t, scale)
        rel = srp.relative(f, *pair, scale) if pair else torch.full_like(reward, float("nan"))
    return Branch(-objective.mean() / n_branches, reward, rel, sigma)


def _srp_objective(ctx: Context, f, pair, index, sigma, k_bounds, swap: bool) -> torch.Tensor:
    pos, neg = pair[::-1] if swap else pair
    if ctx.cfg.weighting == "lambda":
        return srp.lambda_weight(sigma, ctx.cfg.train_sigma_range[1]) * srp.relative(f, pos, neg, ctx.reward.scale)
    k = srp.k_schedule(k_bounds, index, ctx.cfg.train_grid_len).to(f.device)
    return srp.cfg_like(f, pos, neg, k, ctx.reward.scale)


def direct_align_branches(ctx: Context, mb: MicroBatch, relative: bool):
    """Denoise branch (down sigma_hi -> sigma_lo) and, for SRPO, the inversion branch (up sigma_b -> sigma_lo)."""
    cond = ctx.backend.encode_prompts(mb.prompts)
    x0 = clean_latents(ctx, mb, cond)
    eps = ctx.noise(len(mb.prompts), mb.gen)
    i = torch.randint(0, ctx.cfg.train_grid_len - 2 * ctx.cells, (len(mb.prompts),), generator=mb.gen).to(ctx.grid.device)
    s_hi, s_lo, s_b = ctx.grid[i], ctx.grid[i + ctx.cells], ctx.grid[i + 2 * ctx.cells]
    inversion = relative and ctx.cfg.inversion
    n = 2 if inversion else 1

    x = da.inject(x0, eps, s_hi)
    x0_hat = da.recover(da.euler_step(x, ctx.backend.velocity(x, s_hi, cond, ctx.cfg.guidance), s_hi, s_lo), eps, s_lo)
    f, t, pair = _score(ctx, mb, x0_hat)
    objective = _srp_objective(ctx, f, pair, i, s_hi, ctx.cfg.k_denoise, False) if relative else srp.plain(f, t, ctx.reward.scale)
    yield _branch(ctx, f, t, pair, objective, s_hi, n)
    if inversion:
        x = da.inject(x0, eps, s_b)
        x0_hat = da.recover(da.euler_step(x, ctx.backend.velocity(x, s_b, cond, ctx.cfg.guidance), s_b, s_lo), eps, s_lo)
        f, t, pair = _score(ctx, mb, x0_hat)
        yield _branch(ctx, f, t, pair, _srp_objective(ctx, f, pair, i, s_hi, ctx.cfg.k_inversion, True), s_hi, n)


def srpo(ctx: Context, mb: MicroBatch):
    """SRPO: Direct-Align + semantic relative reward + inversion branch."""
    yield from direct_align_branches(ctx, mb, relative=True)


def direct_align(ctx: Context, mb: MicroBatch):
    """Direct-Align with the plain reward, one denoise branch."""
    yield from direct_align_branches(ctx, mb, relative=False)


def refl(ctx: Context, mb: MicroBatch):
    """ReFL: roll out to a random one of the last `late_steps` sampler steps, predict x0 in one step, reward it."""
    cond = ctx.backend.encode_prompts(mb.prompts)
    n = ctx.cfg.rollout_steps
    j = int(torch.randint(max(0, n - ctx.cfg.late_steps), n, (1,), generator=mb.gen))
    with torch.no_grad():
        x = da.euler_rollout(ctx.velocity_fn(cond), ctx.noise(len(mb.prompts), mb.gen), ctx.sample_grid, 0, j)
    s = ctx.sample_grid[j].expand(len(mb.prompts))
    x0 = da.one_step_x0(x, ctx.backend.velocity(x, s, cond, ctx.cfg.guidance), s)
    f, t, pair = _score(ctx, mb, x0)
    yield _branch(ctx, f, t, pair, srp.plain(f, t, ctx.reward.scale), s, 1)


def draft(ctx: Context, mb: MicroBatch):
    """DRaFT-K: no-grad rollout to the last K = late_steps sampler steps, then K steps with gradients."""
    cond = ctx.backend.encode_prompts(mb.prompts)
    n, k = ctx.cfg.rollout_steps, ctx.cfg.late_steps
    with torch.no_grad():
        x = da.euler_rollout(ctx.velocity_fn(cond), ctx.noise(len(mb.prompts), mb.gen), ctx.sample_grid, 0, n - k)
    x = da.euler_rollout(ctx.velocity_fn(cond), x, ctx.sample_grid, n - k, n)
    f, t, pair = _score(ctx, mb, x)
    yield _branch(ctx, f, t, pair, srp.plain(f, t, ctx.reward.scale), ctx.sample_grid[n - k].expand(len(mb.prompts)), 1)


RECIPES = {"srpo": srpo, "direct-align": direct_align, "refl": refl, "draft": draft}
