"""Sigma schedules for rectified flow (pure functions).

Convention: sigma in [0, 1], x_sigma = sigma * eps + (1 - sigma) * x0; sampling runs sigma 1 -> 0.
"""

from dataclasses import dataclass

import torch


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/FLUX time shift s(t) = shift * t / (1 + (shift - 1) * t); maps [0, 1] onto [0, 1]."""
    return shift * t / (1 + (shift - 1) * t)


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Shifted sampling grid s(linspace(1, 0, steps + 1)), shape (steps + 1,), from 1.0 down to 0.0.

    Written out rather than taken from FlowMatchEulerDiscreteScheduler because the reference grid
    includes both endpoints exactly, while the scheduler's grid starts at 1/num_train_timesteps.
    """
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def train_sigmas(sigma_min: float, sigma_max: float, grid_len: int) -> torch.Tensor:
    """Training grid linspace(sigma_max, sigma_min, grid_len), shape (grid_len,), index 0 = highest sigma."""
    return torch.linspace(sigma_max, sigma_min, grid_len, dtype=torch.float64).float()


def dsigma_cells(grid_len: int, groundtruth_ratio: float) -> int:
    """Direct-Align step width in grid cells, the reference's int((1 - groundtruth_ratio) * grid_len) + 1.

    In floating point 1 - 0.9 is just below 0.1, so ratio 0.9 on 1,000 cells gives 99 + 1 = 100.
    """
    return int((1.0 - groundtruth_ratio) * grid_len) + 1


def reference_train_range(shift: float = 3.0, grid_steps: int = 50, first: int = 5, last: int = 25) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the reference: entries [last] and [first] of a shifted grid_steps-step grid.

    With the defaults: (0.750, 0.964), the FLUX/HPSv2.1 setting of the SRPO reference code.
    """
    grid = sampling_sigmas(grid_steps, shift)
    return float(grid[last]), float(grid[first])


@dataclass(frozen=True)
class Draw:
    """Where one Direct-Align step sits, per sample (each a (B,) long tensor).

    Grid positions count from the highest sigma (index 0 of `train_sigmas`): the denoise branch steps
    hi -> lo, the inversion branch steps up b -> lo_inv. k indices count from the LOWEST sigma, as the
    reference's k tables do: `k_d` is the denoise branch's, `k_i` the inversion branch's.
    """
    hi: torch.Tensor
    lo: torch.Tensor
    b: torch.Tensor
    lo_inv: torch.Tensor
    k_d: torch.Tensor
    k_i: torch.Tensor


REFERENCE_MARGIN = 5  # the reference draws mid in 5 .. grid_len - 5


def reference_draw(mid: torch.Tensor, grid_len: int, cells: int) -> Draw:
    """The reference's index arithmetic for a drawn `mid` in [5, grid_len - 5]: sigma_lo sits at position
    grid_len - mid, sigma_hi one step (of width w = min(cells, mid, grid_len - mid)) above, sigma_b one step
    below from mid' = max(mid - w, 1), so near either end the step shortens and, at the low end, the two
    branches' sigma_lo differ by a cell. k_d is read at index mid, k_i at mid'.
    """
    w = torch.minimum(torch.minimum(grid_len - mid, torch.full_like(mid, cells)), mid)
    mid_inv = (mid - w).clamp(min=1)
    return Draw(hi=grid_len - mid - w, lo=grid_len - mid, b=grid_len - mid_inv,
                lo_inv=grid_len - torch.clamp(mid_inv + w, max=grid_len), k_d=mid, k_i=mid_inv)


def uniform_draw(i: torch.Tensor, grid_len: int, cells: int) -> Draw:
    """Full-width steps from a sigma_hi position i in [0, grid_len - 2 cells): hi -> lo = i + cells for
    denoising, b = i + 2 cells -> lo for inversion; each branch reads k at its own lower noise level."""
    lo, b = i + cells, i + 2 * cells
    return Draw(hi=i, lo=lo, b=b, lo_inv=lo, k_d=grid_len - 1 - lo, k_i=grid_len - 1 - b)


def draw(kind: str, n: int, grid_len: int, cells: int, gen: torch.Generator) -> Draw:
    """n draws of `kind` ("reference": mid uniform in 5..grid_len - 5; "uniform": sigma_hi uniform)."""
    if kind == "reference":
        mid = torch.randint(REFERENCE_MARGIN, grid_len - REFERENCE_MARGIN + 1, (n,), generator=gen)
        return reference_draw(mid, grid_len, cells)
    return uniform_draw(torch.randint(0, grid_len - 2 * cells, (n,), generator=gen), grid_len, cells)


def floor_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The reference's FLUX timestep input int(1000 sigma) / 1000 (the Euler steps keep the exact sigma)."""
    return torch.floor(sigma * 1000) / 1000


def sigma_to_index(sigmas: torch.Tensor, sigma: float) -> int:
    """Index of the grid entry nearest to sigma."""
    return int(torch.argmin((sigmas - sigma).abs()))
