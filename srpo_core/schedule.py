"""Sigma schedules for rectified flow (pure functions).

Convention: sigma in [0, 1], x_sigma = sigma * eps + (1 - sigma) * x0; sampling runs sigma 1 -> 0.
"""

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
    """Direct-Align step width in grid cells: round((1 - groundtruth_ratio) * grid_len), at least 1."""
    return max(1, round((1.0 - groundtruth_ratio) * grid_len))


def reference_train_range(shift: float = 3.0, grid_steps: int = 50, first: int = 5, last: int = 25) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the reference: entries [last] and [first] of a shifted grid_steps-step grid.

    With the defaults: (0.750, 0.964), the FLUX/HPSv2.1 setting of the SRPO reference code.
    """
    grid = sampling_sigmas(grid_steps, shift)
    return float(grid[last]), float(grid[first])


def sigma_to_index(sigmas: torch.Tensor, sigma: float) -> int:
    """Index of the grid entry nearest to sigma."""
    return int(torch.argmin((sigmas - sigma).abs()))
