"""Training helpers shared by the toy models' build stages."""

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup


def cosine_adamw(params, lr: float, steps: int, warmup: int, weight_decay: float):
    """AdamW with linear warm-up then cosine decay to 0 over `steps`: (optimizer, scheduler)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, max(steps, 1))
