"""Direct-Align tensor math (SRPO paper, section 3.1; pure functions).

Shapes: x0, eps, x, v are latents of any one shape (B, ...); sigma is a float or a (B,) tensor and
broadcasts over the trailing dimensions.
"""

import torch


def _b(sigma, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a float or (B,) sigma to (B, 1, ..., 1) matching `like`."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return s.reshape(-1, *([1] * (like.dim() - 1))) if s.dim() else s


def inject(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """Noisy state with a known noise: x_sigma = sigma * eps + (1 - sigma) * x0."""
    s = _b(sigma, x0)
    return s * eps + (1 - s) * x0


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma_from, sigma_to) -> torch.Tensor:
    """One Euler step of the flow ODE: x_to = x + (sigma_to - sigma_from) * v.

    Down (sigma_to < sigma_from) denoises; up (sigma_to > sigma_from) is the inversion step.
    """
    return x + (_b(sigma_to, x) - _b(sigma_from, x)) * v


def recover(x: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """Recover the clean sample with the known noise: x0_hat = (x_sigma - sigma * eps) / (1 - sigma)."""
    s = _b(sigma, x)
    return (x - s * eps) / (1 - s)


def one_step_x0(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """Naive one-step prediction of the clean sample: x0_pred = x_sigma - sigma * v."""
    return x - _b(sigma, x) * v


def predicted_error_factor(sigma: float, dsigma: float) -> float:
    """Direct-Align error / one-step error, for any velocity: (dsigma / sigma) / (1 - sigma + dsigma).

    Follows from x0_hat = w * x0 + (1 - w) * x0_pred after one down step of dsigma from sigma.
    """
    return (dsigma / sigma) / (1 - sigma + dsigma)


def euler_rollout(velocity, x: torch.Tensor, sigmas: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Integrate x from sigmas[start] to sigmas[stop] with Euler steps; velocity(x, sigma (B,)) -> v."""
    stop = len(sigmas) - 1 if stop is None else stop
    for i in range(start, stop):
        s = sigmas[i].expand(x.shape[0])
        x = euler_step(x, velocity(x, s), s, sigmas[i + 1].expand(x.shape[0]))
    return x
