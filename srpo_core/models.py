"""Build the generator backend and the reward model a config names.

Local directories and files load directly; a hub id downloads through huggingface_hub (with its
progress bars and the user's stored token) only when a user asks for that model, and fails with one
sentence naming the repo and what to do.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import Backend, FluxBackend, SD3Backend
from .config import ConfigError, RunConfig
from .rewards import ClipReward, OpenClipReward, Reward
from .rewards.openclip import HPS_FILE
from . import fixtures
from .toy import assets

# model_index.json `_class_name` -> (config backend, backend class); FLUX.1-dev/schnell/Krea-dev are FluxPipelines
FAMILIES = {"FluxPipeline": ("flux", FluxBackend), "StableDiffusion3Pipeline": ("sd3", SD3Backend)}
SUPPORTED = "FluxPipeline (backend flux) or StableDiffusion3Pipeline (backend sd3)"

HPS_REPO = "xswu/HPSv2"
REWARD_DEFAULTS = {"pickscore": "yuvalkirstain/PickScore_v1", "clip": "openai/clip-vit-large-patch14",
                   "openclip": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "hpsv2.1": HPS_REPO}
# PickScore's model card loads its processor from the laion repo it was fine-tuned from
REWARD_TOKENIZERS = {"pickscore": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class Models:
    backend: Backend
    reward: Reward
    judge: torch.nn.Module | None = None  # the toy world's judge (srpo_core.toy.judge), when the backend is toy


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available; use device=cpu or auto.")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def weights_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """bf16 on GPU by default; refuse bf16 where the GPU lacks it (pre-Ampere) instead of running slowly or wrongly."""
    wants_bf16 = cfg.weights_dtype == "bf16" or cfg.mixed_precision == "bf16"
    if wants_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"bf16 was requested but {torch.cuda.get_device_name(device)} does not support it; "
                          "set weights_dtype=fp32 and mixed_precision=no.")
    if cfg.weights_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.weights_dtype == "bf16" else torch.float32


def _hub_error(e: Exception, repo: str, what: str) -> ConfigError:
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    if isinstance(e, GatedRepoError):
        hint = "it is gated: accept its licence on huggingface.co and log in with `hf auth login`"
    elif isinstance(e, RepositoryNotFoundError):
        hint = "no such repo (or it is private): check the id, or log in with `hf auth login`"
    elif isinstance(e, EntryNotFoundError):
        hint = "the repo lacks the expected file"
    elif isinstance(e, LocalEntryNotFoundError):
        hint = "it is not in the local cache and the hub cannot be reached (offline)"
    else:
        hint = f"the download failed ({type(e).__name__})"
    return ConfigError(f"cannot load {what} {repo!r}: {hint}; or pass a local path instead.")


def resolve(name: str, what: str) -> Path:
    """A local directory as is, else a hub snapshot downloaded on request (for pipelines only the folders
    model_index.json lists: FLUX/SD3 repos also hold multi-GB single-file checkpoints we do not read)."""
    if not name:
        raise ConfigError(f"{what} needs a hub id or a local directory.")
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import hf_hub_download, snapshot_download
    try:
        try:
            index = json.loads(Path(hf_hub_download(name, "model_index.json")).read_text())
            patterns = ["model_index.json"] + [f"{k}/*" for k, v in index.items() if isinstance(v, list)]
        except Exception as e:  # a plain model repo has no model_index.json: take it whole
            if "EntryNotFound" not in type(e).__name__:
                raise
            patterns = None
        return Path(snapshot_download(name, allow_patterns=patterns))
    except ConfigError:
        raise
    except Exception as e:  # hub errors come in many classes (offline, gated, missing); each gets one sentence
        raise _hub_error(e, name, what) from None


def resolve_file(name: str, filenames: tuple[str, ...], what: str) -> Path:
    """A local file, a file of `filenames` inside a local directory, or that file downloaded from a hub repo."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        for f in filenames:
            if (path / f).is_file():
                return path / f
        raise ConfigError(f"{what} directory {path} holds none of {', '.join(filenames)}.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    error: Exception | None = None
    for f in filenames:
        try:
            return Path(hf_hub_download(name, f))
        except EntryNotFoundError as e:  # try the next known file name
            error = e
        except Exception as e:
            raise _hub_error(e, name, what) from None
    raise _hub_error(error, name, what)


def pipeline_family(path: Path) -> str:
    """The `_class_name` of a diffusers directory; the tiny world's layout has no model_index.json."""
    index = path / "model_index.json"
    if not index.is_file():
        if (path / "transformer").is_dir() and (path / "text_encoder").is_dir():
            return "FluxPipeline"
        raise ConfigError(f"{path} has no model_index.json, so it is not a diffusers pipeline; "
                          f"supported: {SUPPORTED}.")
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in FAMILIES:
        raise ConfigError(f"{path} holds a {name or 'pipeline without _class_name'}, which is not supported; "
                          f"supported: {SUPPORTED}.")
    return name


def quantized_transformer(cls, path: Path, cfg: RunConfig, device: torch.device, dtype: torch.dtype):
    """The frozen transformer through diffusers' bitsandbytes integration (NF4 or LLM.int8), LoRA goes on top."""
    if device.type != "cuda":
        raise ConfigError(f"quantization {cfg.quantization} needs a CUDA GPU (bitsandbytes' 4/8-bit kernels); "
                          "set quantization=none on this device.")
    from diffusers import BitsAndBytesConfig
    q = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
         if cfg.quantization == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
    return cls.from_pretrained(path, subfolder="transformer", quantization_config=q, dtype=dtype)


def load_backend(cfg: RunConfig, device: torch.device, dtype: torch.dtype, keep_prompts: list[str] | None = None) -> Backend:
    """The generator; with `keep_prompts` (free_text_encoders) its text encoders encode them and are dropped before
    the transformer goes to the device."""
    if cfg.backend == "toy":
        return assets.load("generator", lambda path: FluxBackend.from_pretrained(path, device, vae_mode=cfg.vae_decode,
                                                                                 keep_prompts=keep_prompts))
    if cfg.backend == "tiny":
        parts = fixtures.generator_parts()
        return FluxBackend(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"], device,
                           vae_mode=cfg.vae_decode, keep_prompts=keep_prompts)
    path = resolve(cfg.model, "model")
    family, cls = FAMILIES[pipeline_family(path)]
    if family != cfg.backend:
        raise ConfigError(f"model {cfg.model!r} is a {pipeline_family(path)}; set backend={family}.")
    transformer = None
    if cfg.quantization != "none":
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
        model_cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
        transformer = quantized_transformer(model_cls, path, cfg, device, dtype)
    return cls.from_pretrained(path, device, dtype, transformer, cfg.max_sequence_length, cfg.vae_decode, keep_prompts)


def load_reward(cfg: RunConfig, device: torch.device) -> Reward:
    """The reward model with fp32 weights whatever weights_dtype says, as the reference keeps it (bf16 autocast still
    runs its matmuls in bf16), its scale multiplied by reward_scale."""
    reward = _reward(cfg, device, torch.float32)
    reward.scale *= cfg.reward_scale
    return reward


def _reward(cfg: RunConfig, device: torch.device, dtype: torch.dtype) -> Reward:
    if cfg.reward == "toy-hps":  # an HPS-style reward: the plain cosine of normalized features
        return assets.load("reward", lambda path: ClipReward.from_pretrained(path, use_logit_scale=False, device=device))
    if cfg.reward == "tiny-clip":
        parts = fixtures.reward_parts()
        return ClipReward(parts["model"], parts["tokenizer"], use_logit_scale=False, device=device)
    name = cfg.reward_model or REWARD_DEFAULTS[cfg.reward]
    if cfg.reward in ("hpsv2.1", "openclip"):
        files = (HPS_FILE,) if cfg.reward == "hpsv2.1" else OPEN_CLIP_FILES
        checkpoint = resolve_file(name, files, "reward_model")
        return OpenClipReward.from_checkpoint(checkpoint, cfg.reward_arch, use_logit_scale=cfg.reward == "openclip",
                                              device=device, dtype=dtype)
    # a local reward_model brings its own tokenizer; the default hub one uses the family's tokenizer repo
    tokenizer = cfg.reward_tokenizer or ("" if cfg.reward_model else REWARD_TOKENIZERS.get(cfg.reward, ""))
    return ClipReward.from_pretrained(resolve(name, "reward_model"), use_logit_scale=True, device=device, dtype=dtype,
                                      tokenizer=resolve(tokenizer, "reward_tokenizer") if tokenizer else None)


def build(cfg: RunConfig, keep_prompts: list[str] | None = None) -> Models:
    """The config's generator and reward (and the toy world's judge); `keep_prompts`: see `load_backend`."""
    device = pick_device(cfg.device)
    dtype = weights_dtype(cfg, device)
    backend = load_backend(cfg, device, dtype, keep_prompts)
    if cfg.gradient_checkpointing:
        backend.transformer.enable_gradient_checkpointing()
    judge = None
    if cfg.backend == "toy":
        from .toy.judge import load_judge
        judge = load_judge()
    return Models(backend, load_reward(cfg, device), judge)
