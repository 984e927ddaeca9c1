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
from .schedule import draw, dsigma_cells, floor_timestep, sampling_sigmas, train_sigmas


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
        self.shift = self.cfg.shift or self.backend.sampling_shift(self.cfg.resolution)
        self.rollout_grid = sampling_sigmas(self.cfg.rollout_steps, self.shift).to(dev)
        self.sample_grid = sampling_sigmas(self.cfg.sample_steps, self.shift).to(dev)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float) -> torch.Tensor:
        """The backend's velocity, fed the reference's floored timestep when the config asks for it."""
        return self.backend.velocity(x, floor_timestep(sigma) if self.cfg.floor_timestep else sigma, cond, guidance)

    def velocity_fn(self, cond: Cond, guidance: float):
        return lambda x, s: self.velocity(x, s, cond, guidance)

    def noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        shape = (n, *self.backend.latent_shape(self.cfg.resolution))
        return torch.randn(shape, generator=gen).to(self.backend.device)


@dataclass
class MicroBatch:
    prompts: list[str]
    pos_word: str
    neg_word: str
    gen: torch.Generator        # CPU generator of this process: sigma draws, offline picks and fresh noise
    noise_gen: torch.Generator  # CPU generator seeded alike on every process: the rollout's starting noise


@dataclass
class Branch:
    loss: torch.Tensor     # scalar, already divided by the number of branches
    reward: torch.Tensor   # (B,) plain reward r(x0_hat, p), detached
    srp: torch.Tensor      # (B,) r(x0_hat, p+) - r(x0_hat, p-), detached (nan without control words)
    sigma: torch.Tensor    # (B,) noise level the branch's step started from


def _integrate(ctx: Context, cond: Cond, noise: torch.Tensor, grid: torch.Tensor, guidance: float) -> torch.Tensor:
    """Euler integration from pure noise to clean latents, under inference mode (no autograd bookkeeping at all;
    no_grad in sharded sessions, see Context.inference_mode): the result is only ever a constant input."""
    with torch.inference_mode() if ctx.inference_mode else torch.no_grad():
        return da.euler_rollout(ctx.velocity_fn(cond, guidance), noise, grid)


def rollout(ctx: Context, cond: Cond, noise: torch.Tensor) -> torch.Tensor:
    """A training rollout of the current model: rollout_steps at rollout_guidance."""
    return _integrate(ctx, cond, noise, ctx.rollout_grid, ctx.cfg.rollout_guidance)


def sample(ctx: Context, cond: Cond, noise: torch.Tensor) -> torch.Tensor:
    """Images for people (previews, eval, the app): sample_steps at sample_guidance."""
    return _integrate(ctx, cond, noise, ctx.sample_grid, ctx.cfg.sample_guidance)


def clean_and_noise(ctx: Context, mb: MicroBatch, cond: Cond) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) for Direct-Align. Online: a rollout of the model being tuned and, with noise_prior=rollout, the
    very noise it started from (the reference's noise prior). Offline: real images and fresh noise."""
    if ctx.clean_bank is not None:
        idx = torch.randint(len(ctx.clean_bank), (len(mb.prompts),), generator=mb.gen)
        return ctx.clean_bank[idx.to(ctx.clean_bank.device)], ctx.noise(len(mb.prompts), mb.gen)
    start = ctx.noise(len(mb.prompts), mb.noise_gen)
    x0 = rollout(ctx, cond, start)
    return x0, start if ctx.cfg.noise_prior == "rollout" else ctx.noise(len(mb.prompts), mb.gen)


def _score(ctx: Context, mb: MicroBatch, latents: torch.Tensor):
    """Decode with gradients; return image features and the (p, p+, p-) text features."""
    f = ctx.reward.image_features(ctx.backend.decode(latents))
    words = bool(mb.pos_word and mb.neg_word)
    texts = mb.prompts + ([srp.augment(p, mb.pos_word) for p in mb.prompts] +
                          [srp.augment(p, mb.neg_word) for p in mb.prompts] if words else [])
    t = ctx.reward.text_features(texts).to(f.device).split(len(mb.prompts))
    return f, t[0], (t[1], t[2]) if words else None


def branch_loss(objective: torch.Tensor, cfg: RunConfig, n_branches: int) -> torch.Tensor:
    """Scalar loss of a branch's objective (B,): -r, or the reference's relu(threshold - r); / n_branches."""
    per_image = torch.relu(cfg.loss_threshold - objective) if cfg.loss == "threshold" else -objective
    return per_image.mean() / n_branches


def _branch(ctx, f, t, pair, objective, sigma, n_branches) -> Branch:
    scale = ctx.reward.scale
    with torch.no_grad():
        reward = srp.plain(f, t, scale)
        rel = srp.relative(f, *pair, scale) if pair else torch.full_like(reward, float("nan"))
    return Branch(branch_loss(objective, ctx.cfg, n_branches), reward, rel, sigma)


def _srp_objective(ctx: Context, f, pair, k_index, sigma, k_bounds, swap: bool) -> torch.Tensor:
    pos, neg = pair[::-1] if swap else pair
    if ctx.cfg.weighting == "lambda":
        return srp.lambda_weight(sigma, ctx.cfg.train_sigma_range[1]) * srp.relative(f, pos, neg, ctx.reward.scale)
    k = srp.k_at(k_bounds, k_index, ctx.cfg.train_grid_len).to(f.device)
    return srp.cfg_like(f, pos, neg, k, ctx.reward.scale)


def _recovered(ctx: Context, x0, eps, cond, s_from, s_to) -> torch.Tensor:
    """Direct-Align: inject eps at s_from, one graded model step to s_to (down or up), recover x0 at s_to."""
    x = da.inject(x0, eps, s_from)
    return da.recover(da.euler_step(x, ctx.velocity(x, s_from, cond, ctx.cfg.train_guidance), s_from, s_to), eps, s_to)


def direct_align_branches(ctx: Context, mb: MicroBatch, relative: bool):
    """Denoise branch (down sigma_hi -> sigma_lo) and, for SRPO, the inversion branch (up sigma_b -> sigma_lo)."""
    cond = ctx.backend.encode_prompts(mb.prompts)
    x0, eps = clean_and_noise(ctx, mb, cond)
    d = draw(ctx.cfg.sigma_draw, len(mb.prompts), ctx.cfg.train_grid_len, ctx.cells, mb.gen)
    s_hi, s_lo, s_b, s_lo_inv = (ctx.grid[i.to(ctx.grid.device)] for i in (d.hi, d.lo, d.b, d.lo_inv))
    inversion = relative and ctx.cfg.inversion
    n = 2 if inversion else 1

    f, t, pair = _score(ctx, mb, _recovered(ctx, x0, eps, cond, s_hi, s_lo))
    objective = _srp_objective(ctx, f, pair, d.k_d, s_hi, ctx.cfg.k_denoise, False) if relative else srp.plain(f, t, ctx.reward.scale)
    yield _branch(ctx, f, t, pair, objective, s_hi, n)
    if inversion:
        f, t, pair = _score(ctx, mb, _recovered(ctx, x0, eps, cond, s_b, s_lo_inv))
        yield _branch(ctx, f, t, pair, _srp_objective(ctx, f, pair, d.k_i, s_b, ctx.cfg.k_inversion, True), s_b, n)


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
        x = da.euler_rollout(ctx.velocity_fn(cond, ctx.cfg.rollout_guidance), ctx.noise(len(mb.prompts), mb.gen),
                             ctx.rollout_grid, 0, j)
    s = ctx.rollout_grid[j].expand(len(mb.prompts))
    x0 = da.one_step_x0(x, ctx.velocity(x, s, cond, ctx.cfg.train_guidance), s)
    f, t, pair = _score(ctx, mb, x0)
    yield _branch(ctx, f, t, pair, srp.plain(f, t, ctx.reward.scale), s, 1)


def draft(ctx: Context, mb: MicroBatch):
    """DRaFT-K: no-grad rollout to the last K = late_steps sampler steps, then K steps with gradients."""
    cond = ctx.backend.encode_prompts(mb.prompts)
    n, k = ctx.cfg.rollout_steps, ctx.cfg.late_steps
    with torch.no_grad():
        x = da.euler_rollout(ctx.velocity_fn(cond, ctx.cfg.rollout_guidance), ctx.noise(len(mb.prompts), mb.gen),
                             ctx.rollout_grid, 0, n - k)
    x = da.euler_rollout(ctx.velocity_fn(cond, ctx.cfg.train_guidance), x, ctx.rollout_grid, n - k, n)
    f, t, pair = _score(ctx, mb, x)
    yield _branch(ctx, f, t, pair, srp.plain(f, t, ctx.reward.scale), ctx.rollout_grid[n - k].expand(len(mb.prompts)), 1)


RECIPES = {"srpo": srpo, "direct-align": direct_align, "refl": refl, "draft": draft}
