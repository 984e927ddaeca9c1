"""A preset's models at full size with random weights, to measure memory and speed without downloading anything.

The published configurations ship in configs/models/ (JSON, no weights; any local diffusers pipeline folder works
too, such as the fixtures). Each model is built with its parameters on the meta device, then every parameter is
placed on its device as random values, one tensor at a time: nothing is written to disk and no full-precision copy
of a quantized model ever exists. The frozen transformer's linear layers become bitsandbytes NF4 / LLM.int8 layers
first, as diffusers' quantizer makes them when loading real weights. Memory and speed do not depend on the values.
"""

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device

from .config import ConfigError, RunConfig
from .models import FAMILIES, Models, build, load_reward, pick_device, weights_dtype
from .toy.text import toy_tokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"
# hub id -> the shipped configuration folder of that model
SHIPPED = {"black-forest-labs/FLUX.1-dev": "FLUX.1-dev", "stabilityai/stable-diffusion-3.5-medium":
           "stable-diffusion-3.5-medium", "yuvalkirstain/PickScore_v1": "PickScore_v1"}
INIT_STD = 0.02  # small random values: activations stay finite through 57 blocks


def config_dir(name: str, what: str) -> Path:
    """The folder of configurations for a model: a local folder as is, else the shipped one for a known hub id."""
    if Path(name).is_dir():
        return Path(name)
    if name in SHIPPED:
        return CONFIGS / SHIPPED[name]
    raise ConfigError(f"{what} {name!r} has no shipped configuration for random weights; known: "
                      f"{', '.join(SHIPPED)}, or a local folder of config files.")


def materialize(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> torch.nn.Module:
    """Give every meta parameter random values on `device` (floating ones in `dtype`), one tensor at a time; a
    bitsandbytes layer's weight is quantized as it lands, as diffusers' loader quantizes real weights."""
    for name, param in list(module.named_parameters()):
        if param.device.type != "meta":
            continue
        kind = dtype if param.dtype.is_floating_point else param.dtype
        value = torch.randn(param.shape, generator=gen, dtype=torch.float32).mul_(INIT_STD).to(device, kind)
        owner, leaf = _owner(module, name)
        if type(param).__module__.startswith("bitsandbytes"):
            setattr(owner, leaf, type(param)(value, requires_grad=False, **_bnb_kwargs(param)).to(device))
        else:
            set_module_tensor_to_device(module, name, device, value=value)
    for name, buffer in list(module.named_buffers()):  # built for real by init_empty_weights(include_buffers=False)
        owner, leaf = _owner(module, name)
        owner._buffers[leaf] = buffer.to(device)
    return module


def _owner(module: torch.nn.Module, name: str):
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def _bnb_kwargs(param) -> dict:
    if hasattr(param, "quant_type"):  # Params4bit
        return {"quant_type": param.quant_type, "compress_statistics": param.compress_statistics,
                "blocksize": param.blocksize}
    return {"has_fp16_weights": False}  # Int8Params


def quantize_linears(model: torch.nn.Module, mode: str, compute_dtype: torch.dtype) -> None:
    """Swap the transformer's nn.Linear layers for bitsandbytes' (meta) layers: NF4 (4-bit) or LLM.int8, the
    classes diffusers' BitsAndBytesConfig(load_in_4bit / load_in_8bit) loads into."""
    import bitsandbytes as bnb
    for name, child in list(model.named_modules()):
        if type(child) is not torch.nn.Linear:
            continue
        with init_empty_weights():
            layer = (bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                       compute_dtype=compute_dtype, quant_type="nf4") if mode == "nf4" else
                     bnb.nn.Linear8bitLt(child.in_features, child.out_features, child.bias is not None,
                                         has_fp16_weights=False))
        owner, leaf = _owner(model, name)
        setattr(owner, leaf, layer)
    model.is_quantized = True  # what the backends check before moving a transformer (bitsandbytes refuses .to())


def _empty(cls, config_path: Path):
    """`cls` built from a config file with meta parameters and real buffers."""
    with init_empty_weights(include_buffers=False):
        if hasattr(cls, "from_config"):  # diffusers
            return cls.from_config(cls.load_config(config_path))
        from transformers import AutoConfig
        return cls(AutoConfig.from_pretrained(config_path))


def _tokenizer(length: int):
    """Random weights read any token ids: the toy world's word-level tokenizer, padding to the model's real length."""
    tokenizer = toy_tokenizer()
    tokenizer.model_max_length = length
    return tokenizer


def random_backend(cfg: RunConfig, device: torch.device, dtype: torch.dtype, gen: torch.Generator,
                   keep_prompts: list[str] | None = None):
    """The generator pipeline of `cfg.model` (FLUX or SD3) at full size, random weights, through the backend classes
    the real loader returns. The transformer is filled in last, so with `keep_prompts` the text encoders have encoded
    them and gone before it takes memory, as when loading real weights."""
    import diffusers
    import transformers
    root = config_dir(cfg.model, "model")
    index = json.loads((root / "model_index.json").read_text())
    family, backend_cls = FAMILIES.get(index.get("_class_name"), (None, None))
    if family != cfg.backend:
        raise ConfigError(f"model {cfg.model!r} is a {index.get('_class_name')}; random weights need backend={family}.")
    modules = {k: v for k, v in index.items() if isinstance(v, list) and v[1] and not k.startswith("tokenizer")}
    parts = {}
    for name, (library, class_name) in modules.items():  # tokenizers are made below; optional parts stay None
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        if name == "scheduler":
            parts[name] = cls.from_config(cls.load_config(root / name))
            continue
        parts[name] = _empty(cls, root / name)
        if name != "transformer":
            materialize(parts[name], device, dtype, gen).eval()
    for name in [k for k in parts if k.startswith("text_encoder")]:
        parts[name.replace("text_encoder", "tokenizer")] = _tokenizer(getattr(parts[name].config, "max_position_embeddings",
                                                                               cfg.max_sequence_length or 512))
    if cfg.quantization != "none":
        quantize_linears(parts["transformer"], cfg.quantization, dtype)
    optional = {k: None for k, v in index.items() if isinstance(v, list) and not v[1]}  # FLUX's image encoder
    pipe = getattr(diffusers, index["_class_name"])(**parts, **optional)
    if family == "flux":
        backend = backend_cls(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, device, pipe,
                              cfg.max_sequence_length or 512, cfg.vae_decode, keep_prompts)
    else:
        backend = backend_cls(pipe, device, cfg.max_sequence_length or 256, cfg.vae_decode, keep_prompts)
    materialize(backend.transformer, device, dtype, gen)  # in place: the backend and pipeline hold this module
    return backend


def random_reward(cfg: RunConfig, device: torch.device, gen: torch.Generator):
    """The reward at full size with random fp32 weights (as the real loader keeps them): open_clip architectures for
    hpsv2.1 / openclip (open_clip's own initialization), a transformers CLIPModel config for pickscore / clip; the
    built-in rewards as they are."""
    from .rewards import ClipReward, OpenClipReward
    if cfg.reward in ("toy-hps", "tiny-clip"):
        return load_reward(cfg, device)
    if cfg.reward in ("hpsv2.1", "openclip"):
        import open_clip

        from .rewards.openclip import architecture
        name = architecture(cfg.reward_arch)
        # open_clip moves what it builds to a device itself, so it initializes for real (ViT-H-14: seconds)
        model = open_clip.create_model(name, pretrained=None, device=device)
        reward = OpenClipReward(model.eval(), open_clip.get_tokenizer(name), use_logit_scale=cfg.reward == "openclip",
                                device=device)
    else:
        from transformers import CLIPModel
        model = _empty(CLIPModel, config_dir(cfg.reward_model or "yuvalkirstain/PickScore_v1", "reward_model"))
        reward = ClipReward(materialize(model, device, torch.float32, gen).eval(),
                            _tokenizer(model.config.text_config.max_position_embeddings), use_logit_scale=True, device=device)
    reward.scale *= cfg.reward_scale
    return reward


def build_random(cfg: RunConfig, keep_prompts: list[str] | None = None, seed: int = 0) -> Models:
    """`models.build`'s counterpart for random weights (the same backend and reward classes, the same options); the
    built-in tiny and toy worlds are built as they are."""
    if cfg.backend in ("tiny", "toy"):
        return build(cfg, keep_prompts)
    device = pick_device(cfg.device)
    gen = torch.Generator().manual_seed(seed)
    backend = random_backend(cfg, device, weights_dtype(cfg, device), gen, keep_prompts)
    if cfg.gradient_checkpointing:
        backend.transformer.enable_gradient_checkpointing()
    return Models(backend, random_reward(cfg, device, gen))
