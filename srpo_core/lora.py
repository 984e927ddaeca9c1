"""What trains (a LoRA adapter through peft, or every transformer weight) and its optimizer (torch / bitsandbytes)."""

import torch
from diffusers.optimization import get_scheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from .config import RunConfig


def add_lora(transformer: torch.nn.Module, cfg: RunConfig, default_targets: list[str]) -> list[torch.nn.Parameter]:
    """Freeze the base weights, add a LoRA adapter, and return the trainable LoRA parameters."""
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       target_modules=cfg.lora_targets or default_targets, init_lora_weights="gaussian"))
    params = [p for n, p in transformer.named_parameters() if "lora" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def make_trainable(transformer: torch.nn.Module, cfg: RunConfig, default_targets: list[str]) -> list[torch.nn.Parameter]:
    """finetune=lora: a LoRA adapter on a frozen base; finetune=full: every transformer weight."""
    if cfg.finetune == "lora":
        return add_lora(transformer, cfg, default_targets)
    transformer.requires_grad_(True)
    return list(transformer.parameters())


def tuned_state_dict(transformer: torch.nn.Module, cfg: RunConfig, state: dict | None = None) -> dict[str, torch.Tensor]:
    """The weights a run saves, on the CPU: the LoRA layers (peft's key names) or the whole transformer.
    `state` is a full state dict gathered from sharded processes; None reads the module itself."""
    if cfg.finetune == "lora":
        state = get_peft_model_state_dict(transformer, state_dict=state)
    elif state is None:
        state = transformer.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def make_optimizer(params: list[torch.nn.Parameter], cfg: RunConfig) -> torch.optim.Optimizer:
    kw = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw)
    import bitsandbytes as bnb  # heavy; imported only when an 8-bit optimizer is chosen
    cls = bnb.optim.AdamW8bit if cfg.optimizer == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, **kw)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig):
    return get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
