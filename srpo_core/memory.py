"""A GPU memory estimate for one training step, shown before launch.

weights (by dtype / quantization) + LoRA (fp32 weights + grads) or, fully fine-tuned, the transformer's grads +
optimizer states + activations; a sharded run divides the transformer's weights, grads and states by the processes.
Activations are not guessed: the transformer and the VAE decoder are rebuilt from their configs on
torch's meta device (no memory, no weights), LoRA is added, and one Direct-Align branch (velocity ->
decode) runs under saved-tensor hooks that add up the bytes autograd keeps for backward.
"""

import torch
from torch import nn

from .config import RunConfig
from .lora import make_trainable

GB = 1024 ** 3
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "paged-adamw8bit": 2}  # state bytes per LoRA parameter
# NF4: 4 bits + one fp32 absmax per 64 weights; int8: 1 byte + per-row scales (negligible)
LINEAR_BYTES = {"nf4": 0.5 + 4 / 64, "int8": 1.0}
CUDA_OVERHEAD_GB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces and allocator slack, seen on typical setups


def weight_bytes(module: nn.Module | None, dtype_bytes: int, quantization: str = "none") -> float:
    """Bytes of a module's frozen weights (LoRA excluded): Linear weights at the quantized size (counted from
    in/out features, since bitsandbytes stores them packed), everything else at dtype_bytes."""
    if module is None:
        return 0.0
    total = 0.0
    for prefix, m in module.named_modules():
        for name, p in m.named_parameters(recurse=False):
            if "lora_" in f"{prefix}.{name}":
                continue
            if quantization != "none" and isinstance(m, nn.Linear) and name == "weight":
                total += m.in_features * m.out_features * LINEAR_BYTES[quantization]
            else:
                total += p.numel() * dtype_bytes
    return total


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while fn() runs, parameters excluded."""
    total = 0

    def pack(t):
        nonlocal total
        base = t if t._base is None else t._base  # frozen weights are often saved as transposed views
        if not isinstance(base, nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


class _FlashLikeAttention(torch.autograd.Function):
    """Stands in for SDPA on the meta device, which always decomposes it into the math path (a saved
    T x T score matrix per head); GPU flash / efficient kernels save q, k, v, out and a row logsumexp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("meta-device attention stand-in only measures the forward pass")


def _flash_like_sdpa(query, key, value, *args, **kwargs):
    return _FlashLikeAttention.apply(query, key, value)


def activation_bytes(backend, cfg: RunConfig, cond, dtype: torch.dtype) -> dict[str, float]:
    """Saved activations of one branch at cfg's resolution and batch, measured on meta copies of the modules."""
    from .backends.base import Cond
    transformer_cls, vae_cls = type(backend.transformer), type(backend.vae)
    with torch.device("meta"):
        # nn.Module.to: ModelMixin.to warns about modules kept in fp32, which concerns loaded weights only
        transformer = nn.Module.to(transformer_cls.from_config(backend.transformer.config), dtype)
        vae = nn.Module.to(vae_cls.from_config(backend.vae.config), dtype)
    make_trainable(transformer, cfg, backend.lora_targets)
    vae.requires_grad_(False)
    c, h, w = backend.latent_shape(cfg.resolution)
    # only shapes matter; a CFG backend runs uncond + cond as one batch
    b = cfg.batch_size * (2 if backend.uses_cfg and cfg.train_guidance > 1 else 1)
    with torch.device("meta"):
        x, sigma = torch.zeros(b, c, h, w, dtype=dtype), torch.zeros(b, dtype=dtype)
        meta_cond = Cond(torch.zeros((b, *cond.embeds.shape[1:]), dtype=dtype),
                         torch.zeros((b, *cond.pooled.shape[1:]), dtype=dtype))
    real = backend.denoiser, backend.vae
    backend.denoiser = transformer
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _flash_like_sdpa
    try:
        out = {}
        v = None

        def run_transformer():
            nonlocal v
            v = backend.velocity(x, sigma, meta_cond, 1.0 if backend.uses_cfg else cfg.train_guidance)
        out["transformer"] = saved_bytes(run_transformer)
        backend.vae = vae
        out["vae_decode"] = saved_bytes(lambda: backend.decode(v[:cfg.batch_size]))
    finally:
        backend.denoiser, backend.vae = real
        torch.nn.functional.scaled_dot_product_attention = sdpa
    if cfg.gradient_checkpointing:
        # checkpointing keeps each block's input and recomputes one block at a time in backward
        n_blocks = len(transformer.transformer_blocks) + len(getattr(transformer, "single_transformer_blocks", []))
        block_input = b * (h * w // 4 + cond.embeds.shape[1]) * transformer.inner_dim * torch.finfo(dtype).bits // 8
        out["transformer"] = n_blocks * block_input + out["transformer"] / n_blocks
    if cfg.vae_decode == "checkpoint":
        out["vae_decode"] = cfg.batch_size * c * h * w * torch.finfo(dtype).bits // 8
    return out


def estimate(backend, reward, cfg: RunConfig, cond, trainable: int, dtype: torch.dtype, shards: int = 1) -> dict[str, float]:
    """GB by component and in total (rounded to 0.01); `cond` = one encoded prompt (for its shapes),
    `trainable` = trained parameter count, `shards` = processes a sharded run spreads the transformer over."""
    width = torch.finfo(dtype).bits // 8
    full = cfg.finetune == "full"
    # LoRA trains fp32 copies (weights + grads, 8 bytes); a full fine-tune's weights are counted with the
    # transformer's, and its grads and AdamW states take the weights' dtype
    trained_bytes = width if full else 8
    state_bytes = 2 * width if full and cfg.optimizer == "adamw" else OPTIMIZER_BYTES[cfg.optimizer]
    encoders = [getattr(backend.pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")] \
        if getattr(backend, "pipe", None) is not None else [getattr(backend, "text_encoder", None)]
    model = getattr(reward, "model", None)
    parts = {
        "transformer_weights": weight_bytes(backend.transformer, width, cfg.quantization) / shards,
        "text_encoders": sum(weight_bytes(e, width) for e in encoders),
        "vae": weight_bytes(backend.vae, width),
        "reward_model": weight_bytes(model, 4),  # fp32 weights under autocast, as the reference keeps them
        "gradients" if full else "lora_and_grads": trainable * trained_bytes / shards,
        "optimizer_states": trainable * float(state_bytes) / shards,
        **activation_bytes(backend, cfg, cond, dtype),
    }
    gb = {k: round(v / GB, 2) for k, v in parts.items()}
    gb["cuda_overhead"] = CUDA_OVERHEAD_GB
    gb["total"] = round(sum(parts.values()) / GB + CUDA_OVERHEAD_GB, 2)
    return gb


def fits(total_gb: float, device: torch.device) -> str | None:
    """A warning sentence when the estimate exceeds the GPU's memory; None when it fits or there is no GPU."""
    if device.type != "cuda":
        return None
    free, capacity = torch.cuda.mem_get_info(device)
    if total_gb * GB <= capacity:
        return None
    return (f"estimated peak {total_gb:.1f} GB exceeds this GPU's {capacity / GB:.1f} GB; use a smaller preset "
            "(flux-dev-24gb), quantization=nf4, gradient_checkpointing=true or a lower resolution.")


def report(models, cfg: RunConfig, prompts: list[str], trainable: int, shards: int = 1) -> dict:
    """What a session states before its first step: the total, the breakdown, and a warning when it won't fit."""
    backend = models.backend
    est = estimate(backend, models.reward, cfg, backend.encode_prompts(prompts[:1]), trainable, backend.vae.dtype, shards)
    out = {"memory_estimate_gb": est["total"], "memory_breakdown_gb": est}
    warning = fits(est["total"], backend.device)
    if warning:
        out["memory_warning"] = warning
    return out
