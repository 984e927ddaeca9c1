"""The one config schema: a flat dataclass whose fields carry defaults, help and validation.

The CLI (`--set key=value`), presets (partial YAML/JSON) and the app's form all read this schema.
"""

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from . import srp
from .schedule import REFERENCE_MARGIN, dsigma_cells

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = "toy-srpo"  # the trained toy world in assets/toy: offline, CPU, seconds

Backend = Literal["toy", "tiny", "flux", "sd3"]
RewardName = Literal["toy-hps", "tiny-clip", "hpsv2.1", "pickscore", "clip", "openclip", "aesthetic"]
Quantization = Literal["none", "nf4", "int8"]
WeightsDtype = Literal["auto", "fp32", "bf16"]
VaeDecode = Literal["full", "checkpoint", "tiled", "sliced"]
Method = Literal["srpo", "direct-align", "refl", "draft"]
Optimizer = Literal["adamw", "adamw8bit", "paged-adamw8bit"]
LrSchedule = Literal["constant", "constant_with_warmup", "linear", "cosine"]
Precision = Literal["auto", "no", "bf16"]
Weighting = Literal["k-schedule", "lambda"]
NoisePrior = Literal["rollout", "fresh"]
SigmaDraw = Literal["reference", "uniform"]
Loss = Literal["linear", "threshold"]
Device = Literal["auto", "cpu", "cuda"]
Finetune = Literal["lora", "full"]


# Beyond these a value is a typo, not a plan: refuse it before it turns into an out-of-memory kill.
UPPER_BOUNDS = {"resolution": 2048, "batch_size": 64, "rollout_steps": 1000, "sample_steps": 1000, "lora_rank": 1024, "steps": 1_000_000,
                "grad_accum": 1024, "train_grid_len": 100_000}


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; images add their index to a seed


class ConfigError(ValueError):
    """A bad config value or key; the message is one sentence naming the allowed values."""


def _f(default, help: str, group: str, advanced: bool = False, **kw):
    meta = {"help": help, "group": group, "advanced": advanced}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class RunConfig:
    # model
    backend: Backend = _f("tiny", "Generator family: toy (the trained toy world in assets/toy), tiny (random FLUX-family models "
                          "built in code), flux (any FluxPipeline), "
                          "sd3 (StableDiffusion3Pipeline).", "model")
    model: str = _f("", "Hub id or local diffusers directory of the generator ('' = built in code).", "model")
    reward: RewardName = _f("tiny-clip", "Reward model: toy-hps (the toy world's biased reward), tiny-clip, hpsv2.1 (open_clip), pickscore and clip (transformers), "
                                         "openclip (any open_clip checkpoint); aesthetic is image-only, a metric.", "model")
    reward_model: str = _f("", "Hub id, local directory or checkpoint file of the reward model ('' = built in code, "
                               "or the family's hub repo).", "model")
    reward_arch: str = _f("", "open_clip architecture of hpsv2.1/openclip rewards ('' = ViT-H-14), or a path to an "
                              "open_clip model-config JSON.", "model", True)
    reward_tokenizer: str = _f("", "Hub id or directory of the reward's tokenizer ('' = the reward model's own).", "model", True)
    reward_scale: float = _f(1.0, "Multiplier on the reward's own scale (the reference divides PickScore's "
                                  "exp(logit_scale) by 20 to match HPS: 0.05).", "model", True)
    max_sequence_length: int = _f(0, "T5 tokens per prompt (0 = the family default: FLUX.1 512, SD3 256).", "model", True)
    # method
    method: Method = _f("srpo", "Loss recipe: srpo, direct-align (plain reward), refl, draft.", "method")
    pos_words: list[str] = _f(["Detailed"], "Positive control words, one used per step (round robin).", "method")
    neg_words: list[str] = _f(["Smooth"], "Negative control words, one used per step (round robin).", "method")
    word_schedule: list[str] = _f([], "Control-word changes during the run, each 'STEP:pos words/neg words' (words "
                                      "separated by |, e.g. '11:Bright|Vivid/Dark') in effect from that optimizer step; "
                                      "steering a running session "
                                      "records its changes here, so replaying config.json reproduces them.",
                                  "method", True)
    weighting: Weighting = _f("k-schedule", "SRP weighting: k-schedule (the reference's (1 + k) r(p+) - r(p-), k read "
                                            "per branch from k_denoise / k_inversion), or lambda (this project's "
                                            "option, not the reference's: r(p+) - r(p-) times sigma / sigma_max).",
                              "method", True)
    k_denoise: tuple[float, float] = _f((0.1, 0.25), "k_d from lowest to highest training sigma (denoise branch, read "
                                                     "at its sigma_lo).", "method", True)
    k_inversion: tuple[float, float] = _f((0.3, 0.01), "k_i from lowest to highest training sigma (inversion branch, "
                                                       "read at its sigma_b).", "method", True)
    inversion: bool = _f(True, "SRPO only: add the inversion branch.", "method", True)
    noise_prior: NoisePrior = _f("rollout", "Noise injected by Direct-Align: rollout (the noise the step's rollout started "
                                            "from, the same on every process: the reference) or fresh (a new draw). "
                                            "Offline mode (images_dir) has no rollout and always draws fresh noise.",
                                 "method", True)
    sigma_draw: SigmaDraw = _f("reference", "Noise-level draw: reference (one index in 5..grid-5 placing sigma_lo, the "
                                            "step shortened near both ends of the grid) or uniform (sigma_hi uniform, "
                                            "every step full width).", "method", True)
    loss: Loss = _f("linear", "Per-branch loss: linear (-r) or threshold (relu(loss_threshold - r), the reference's "
                              "ReFL-style form; linear in practice for HPS, whose scores stay far below 0.7).",
                    "method", True)
    loss_threshold: float = _f(0.7, "The threshold of loss=threshold.", "method", True)
    # training
    steps: int = _f(20, "Number of optimizer steps.", "training")
    seed: int = _f(0, "Seed for prompts, noise and sigma draws.", "training")
    finetune: Finetune = _f("lora", "What trains: lora (an adapter; the base stays frozen) or full (every transformer "
                                    "weight; the run saves a whole transformer/ folder).", "training")
    shard: bool = _f(False, "Multi-process runs: shard the transformer's weights, gradients and optimizer state across "
                            "processes (FSDP2) instead of replicating them (DDP).", "training", True)
    lr: float = _f(1e-4, "Learning rate of the trained parameters.", "training")
    lr_schedule: LrSchedule = _f("constant", "Learning-rate schedule.", "training", True)
    warmup_steps: int = _f(0, "Warm-up steps of the learning-rate schedule.", "training", True)
    optimizer: Optimizer = _f("adamw", "adamw (torch) or bitsandbytes 8-bit AdamW variants.", "training")
    weight_decay: float = _f(1e-4, "AdamW weight decay.", "training", True)
    grad_clip: float = _f(0.1, "Max gradient norm (0 = no clipping).", "training", True)
    grad_accum: int = _f(1, "Micro-batches accumulated per optimizer step.", "training", True)
    batch_size: int = _f(1, "Images per micro-batch.", "training")
    mixed_precision: Precision = _f("auto", "auto = bf16 on GPU, fp32 on CPU.", "training", True)
    device: Device = _f("auto", "Where to run: auto picks CUDA when available.", "training", True)
    # memory (one GPU)
    weights_dtype: WeightsDtype = _f("auto", "dtype of the frozen weights: auto = bf16 on GPU, fp32 on CPU.", "memory", True)
    quantization: Quantization = _f("none", "bitsandbytes quantization of the frozen transformer (CUDA only).", "memory")
    compile_transformer: bool = _f(False, "torch.compile the transformer's training forward (slow first step; see `bench --compile`).",
                                   "training", True)
    gradient_checkpointing: bool = _f(False, "Recompute transformer activations in backward (less memory, ~30% slower).",
                                      "memory")
    free_text_encoders: bool = _f(False, "Encode the prompt list once while loading, then drop the text encoders before "
                                         "the transformer goes to the GPU, so the two never share its memory (T5-XXL: "
                                         "9.5 GB in bf16); no new prompts after launch.", "memory", True)
    vae_decode: VaeDecode = _f("full", "Reward-path VAE decode: full, checkpoint (recompute in backward), tiled or "
                                       "sliced.", "memory", True)
    # lora
    lora_rank: int = _f(8, "LoRA rank.", "lora")
    lora_alpha: float = _f(8.0, "LoRA alpha (scale = alpha / rank).", "lora", True)
    lora_dropout: float = _f(0.0, "LoRA dropout.", "lora", True)
    lora_targets: list[str] = _f([], "Module names to adapt ([] = the backend's defaults).", "lora", True)
    # sampling and noise levels
    resolution: int = _f(32, "Image side in pixels.", "sampling")
    rollout_steps: int = _f(10, "Euler steps of the no-grad rollouts that make clean samples.", "sampling")
    shift: float = _f(0.0, "Time shift of the sampling schedules; 0 = the model's own scheduler configuration (FLUX.1-dev: "
                           "resolution-dependent, about 1.88 at 512 px and 2.22 at 720; SD3: 3; the toy and tiny "
                           "models: 3). A value above 0 pins it (the reference pins 3).", "sampling", True)
    rollout_guidance: float = _f(1.0, "Guidance of the no-grad training rollouts. On FLUX.1-dev it is the guidance "
                                      "embedding's input; on models without one (toy, FLUX.1-schnell-like, SD3) it is "
                                      "classifier-free guidance with the empty prompt, which doubles the batch above 1.",
                                 "sampling", True)
    train_guidance: float = _f(1.0, "Guidance of the training forwards (every transformer call with gradients: "
                                    "Direct-Align's branches, ReFL's and DRaFT's graded steps); same meaning per "
                                    "model as rollout_guidance. The reference feeds FLUX 3.5 here.", "sampling", True)
    sample_guidance: float = _f(1.0, "Guidance of sampling for people: previews, eval, compare and the app; same "
                                     "meaning per model as rollout_guidance.", "sampling", True)
    sample_steps: int = _f(10, "Euler steps of previews, eval, compare and the app's images.", "sampling", True)
    floor_timestep: bool = _f(False, "Feed the transformer floor(1000 sigma) / 1000 as its timestep, as the reference "
                                     "does for FLUX (the Euler steps keep the exact sigma).", "sampling", True)
    train_sigma_range: tuple[float, float] = _f((0.75, 0.964), "(low, high) sigma range that training draws from.", "sampling", True)
    train_grid_len: int = _f(1000, "Cells of the training sigma grid.", "sampling", True)
    groundtruth_ratio: float = _f(0.9, "dsigma = (1 - ratio) * grid length cells of the training grid.", "sampling", True)
    late_steps: int = _f(5, "refl: the rollout stops at a random one of its last late_steps steps; draft: K steps with gradients.", "method", True)
    images_dir: str = _f("", "Offline mode: a folder of real images encoded by the VAE instead of rollouts.", "sampling", True)
    prompts: list[str] = _f([], "Training prompts ([] = the backend's built-in prompt list).", "sampling")
    prompts_file: str = _f("", "UTF-8 file, one prompt a line (overrides prompts).", "sampling", True)
    # outputs
    preview_every: int = _f(5, "Save a preview image every N steps (0 = never).", "outputs")
    checkpoint_every: int = _f(0, "Save LoRA weights every N steps (0 = only at the end).", "outputs", True)
    preview_prompt: str = _f("", "Prompt of the preview images ('' = the first training prompt).", "outputs", True)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, _hint(f.name), getattr(self, f.name)))
        positive = ["steps", "lr", "lora_rank", "lora_alpha", "batch_size", "grad_accum", "rollout_steps",
                    "sample_steps", "train_grid_len", "resolution", "late_steps"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0 (got {getattr(self, name)}).")
        for name, most in UPPER_BOUNDS.items():
            if getattr(self, name) > most:
                raise ConfigError(f"{name} must be at most {most} (got {getattr(self, name)}).")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in 0..{MAX_SEED} (got {self.seed}).")
        if self.resolution % 16:
            raise ConfigError(f"resolution must be a multiple of 16, the VAE's downsampling times FLUX's 2x2 packing (got {self.resolution}).")
        for name in ["shift", "weight_decay", "grad_clip", "max_sequence_length", "lora_dropout", "warmup_steps", "preview_every", "checkpoint_every"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or greater (got {getattr(self, name)}).")
        lo, hi = self.train_sigma_range
        if not (0 < lo < 1 and 0 < hi < 1):
            raise ConfigError(f"train_sigma_range values must lie strictly between 0 and 1 (got {lo}, {hi}).")
        if lo >= hi:
            raise ConfigError(f"train_sigma_range must be (low, high) with low < high (got {lo}, {hi}).")
        if not 0 <= self.groundtruth_ratio < 1:
            raise ConfigError(f"groundtruth_ratio must be in [0, 1) (got {self.groundtruth_ratio}).")
        if self.sigma_draw == "reference" and self.train_grid_len < 2 * REFERENCE_MARGIN + 1:
            raise ConfigError(f"sigma_draw reference needs train_grid_len of at least {2 * REFERENCE_MARGIN + 1} "
                              f"(it draws in {REFERENCE_MARGIN}..grid-{REFERENCE_MARGIN}; got {self.train_grid_len}).")
        if 2 * dsigma_cells(self.train_grid_len, self.groundtruth_ratio) >= self.train_grid_len:
            raise ConfigError("groundtruth_ratio is too low for train_grid_len: two dsigma steps must fit inside the grid.")
        if self.lora_dropout >= 1:
            raise ConfigError(f"lora_dropout must be below 1 (got {self.lora_dropout}).")
        try:
            srp.parse_schedule(self.word_schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.method == "srpo" and not (self.pos_words and self.neg_words):
            raise ConfigError("method srpo needs at least one positive and one negative control word.")
        if self.method == "draft" and self.late_steps > self.rollout_steps:
            raise ConfigError(f"late_steps ({self.late_steps}) must not exceed rollout_steps ({self.rollout_steps}).")
        if self.reward == "aesthetic":
            raise ConfigError("reward aesthetic is not text-conditioned, so it cannot score r(x, p+) - r(x, p-) or any "
                              "prompt-matched reward; train with hpsv2.1, pickscore, clip or openclip and use "
                              "aesthetic as an evaluation metric (rewards.AestheticScorer).")
        if self.quantization != "none" and self.backend in ("tiny", "toy"):
            raise ConfigError("quantization needs a model loaded from a directory or hub id (backend flux or sd3), "
                              "not the tiny or toy models.")
        if self.shard and self.quantization != "none":
            raise ConfigError("shard=true needs unquantized transformer weights (quantization=none); sharding already "
                              "divides the weights' memory by the number of processes.")
        if self.finetune == "full" and self.quantization != "none":
            raise ConfigError("finetune=full trains every transformer weight, which 4/8-bit quantized weights cannot hold; "
                              "set quantization=none, or finetune=lora.")
        for p in self.prompts:
            if not p.strip():
                raise ConfigError("prompts must not contain empty or whitespace-only entries.")

    @property
    def dsigma(self) -> float:
        lo, hi = self.train_sigma_range
        return (hi - lo) * dsigma_cells(self.train_grid_len, self.groundtruth_ratio) / (self.train_grid_len - 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> "RunConfig":
        return from_dict({**self.to_dict(), **changes})


def _hint(name: str):
    return typing.get_type_hints(RunConfig)[name]


def _coerce(name: str, hint, value):
    """Turn a value (from YAML, JSON or a `key=value` string) into the field's type, or refuse it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))} (got {value!r}).")
        return value
    if origin in (list, tuple):
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name} must be a list (got {value!r}).")
        if origin is tuple:
            if len(items) != len(args):
                raise ConfigError(f"{name} needs {len(args)} comma-separated numbers (got {value!r}).")
            return tuple(_coerce(name, a, v) for a, v in zip(args, items))
        return [_coerce(name, args[0], v) for v in items]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false (got {value!r}).")
    if hint in (int, float):
        try:
            number = hint(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be {'an integer' if hint is int else 'a number'} (got {value!r}).")
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number (got {value!r}).")
        return number
    return str(value)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def from_dict(data: dict) -> RunConfig:
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; allowed keys: {', '.join(field_names())}.")
    return RunConfig(**data)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_preset(name_or_file: str) -> dict:
    """A preset's partial overrides: a name from presets/ or a YAML/JSON file path."""
    path = Path(name_or_file)
    if not path.is_file():
        path = PRESETS_DIR / f"{name_or_file}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {name_or_file!r}; available: {', '.join(preset_names())}, or a YAML/JSON file.")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"preset {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must hold a mapping of config keys to values.")
    return data


def parse_overrides(pairs: list[str]) -> dict:
    """`["steps=5", "lr=1e-4"]` -> {"steps": "5", "lr": "1e-4"}; values are coerced by the schema."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} must look like key=value.")
        out[key.strip()] = value.strip()
    return out


def load(preset: str, overrides: list[str] | dict | None = None) -> RunConfig:
    """Defaults <- preset <- overrides, validated."""
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    return from_dict({**read_preset(preset), **extra})
