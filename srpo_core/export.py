"""A run's LoRA in the formats other tools read: diffusers (the run's own file) and kohya / sd-scripts (what fluxgym,
kohya's tools, ComfyUI and Forge load for FLUX).

kohya's FLUX LoRA names the original Black Forest Labs modules, several of which fuse diffusers' separate layers: a
double block's image and text q / k / v projections are one `*_attn_qkv` layer, a single block's q / k / v and MLP
input are one `linear1`. A diffusers LoRA on the separate layers becomes one fused LoRA of rank n * r whose down
matrix stacks the n down matrices and whose up matrix is block-diagonal (zero rows for a fused part the run did not
train), so up @ down reproduces every part's update exactly; its `.alpha` is n * alpha, keeping the scale alpha / r.
diffusers' own kohya converter (`FluxPipeline.lora_state_dict`) reads such a file back to the same weights.
"""

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ConfigError, RunConfig

# diffusers module inside transformer_blocks.N -> kohya layer of double_blocks_N
DOUBLE = {"attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj", "ff.net.0.proj": "img_mlp_0",
          "ff.net.2": "img_mlp_2", "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2",
          "norm1.linear": "img_mod_lin", "norm1_context.linear": "txt_mod_lin"}
DOUBLE_FUSED = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
SINGLE = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
MLP_RATIO = 4  # FLUX's single blocks: proj_mlp widens the inner dimension 4x (the fused linear1's last part)
KEY = re.compile(r"^transformer\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.lora_([AB])\.weight$")
FORMATS = ("diffusers", "kohya")


def _modules(state: dict[str, torch.Tensor]) -> dict[tuple[str, int], dict[str, dict[str, torch.Tensor]]]:
    """{(block kind, index): {module: {"A": down, "B": up}}} from diffusers' peft key names."""
    out: dict = {}
    for key, value in state.items():
        match = KEY.match(key)
        if not match:
            raise ConfigError(f"LoRA key {key!r} is not a FLUX transformer block's LoRA; the kohya format covers FLUX "
                              "runs' transformer_blocks and single_transformer_blocks.")
        kind, index, module, ab = match.groups()
        out.setdefault((kind, int(index)), {}).setdefault(module, {})[ab] = value
    return out


def _fuse(parts: dict[str, dict[str, torch.Tensor]], names: tuple[str, ...], dims: list[int], alpha: float):
    """(down, up, alpha) of one fused kohya layer from the diffusers LoRAs of its parts (absent parts: zero rows)."""
    trained = [n for n in names if n in parts]
    rank = parts[trained[0]]["A"].shape[0]
    down = torch.cat([parts[n]["A"] for n in trained])
    up = torch.zeros(sum(dims), rank * len(trained), dtype=down.dtype)
    row = 0
    for name, dim in zip(names, dims):
        if name in parts:
            col = trained.index(name) * rank
            up[row:row + dim, col:col + rank] = parts[name]["B"]
        row += dim
    return down, up, alpha * len(trained)


def to_kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A diffusers-format FLUX LoRA state dict (trained with `lora_alpha` = alpha) in kohya's key names, with
    `.alpha` tensors."""
    out = {}

    def put(name, down, up, a):
        out[f"lora_unet_{name}.lora_down.weight"] = down.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = up.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(float(a))

    for (kind, i), parts in sorted(_modules(state).items()):
        prefix, plain, fused = (f"double_blocks_{i}", DOUBLE, DOUBLE_FUSED) if kind == "transformer_blocks" else \
            (f"single_blocks_{i}", SINGLE, SINGLE_FUSED)
        covered = set()
        for layer, names in fused.items():
            if not any(n in parts for n in names):
                continue
            inner = next(parts[n]["B"].shape[0] for n in names if n in parts and n != "proj_mlp")
            dims = [parts[n]["B"].shape[0] if n in parts else (MLP_RATIO * inner if n == "proj_mlp" else inner)
                    for n in names]
            put(f"{prefix}_{layer}", *_fuse(parts, names, dims, alpha))
            covered.update(names)
        for module, ab in parts.items():
            if module in covered:
                continue
            if module not in plain:
                raise ConfigError(f"LoRA module {kind}.{i}.{module} has no kohya FLUX name; export --format diffusers "
                                  "keeps it.")
            put(f"{prefix}_{plain[module]}", ab["A"], ab["B"], alpha)
    return out


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write a run's LoRA in `fmt` (diffusers: the run's own file, copied when `out` is given; kohya: converted)."""
    from .store import CONFIG, RunStore
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r}).")
    store = RunStore(Path(run_dir))
    if not (store.dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (it has no {CONFIG}).")
    cfg: RunConfig = store.config()
    if cfg.finetune != "lora":
        raise ConfigError(f"run {store.name} is a full fine-tune: its transformer/ folder is already a diffusers model; "
                          "export converts LoRA runs.")
    if not store.lora_path.is_file():
        raise ConfigError(f"run {store.name} has no LoRA file yet ({store.lora_path.name}).")
    state = load_file(store.lora_path)
    target = Path(out) if out else store.dir / f"lora_{fmt}.safetensors"
    if fmt == "diffusers":
        if target.resolve() != store.lora_path.resolve():
            target.write_bytes(store.lora_path.read_bytes())
        return target
    if cfg.backend not in ("flux", "toy", "tiny"):
        raise ConfigError(f"the kohya format is FLUX's; run {store.name} tuned backend {cfg.backend} (use --format "
                          "diffusers).")
    metadata = {"ss_network_module": "networks.lora_flux", "ss_network_dim": str(cfg.lora_rank),
                "ss_network_alpha": str(cfg.lora_alpha), "ss_base_model_version": "flux1",
                "ss_training_comment": f"SRPO Studio run {store.name} ({cfg.method}), converted from diffusers format"}
    save_file(to_kohya(state, cfg.lora_alpha), target, metadata=metadata)
    return target
