"""Build the toy world's weights, seeded, in one command:

    python -m toybuild --out assets/toy [--minutes-scale X] [--only vae|judge|generator|reward]

Stages run in dependency order: vae (the generator's AutoencoderKL), judge (reads VAE reconstructions),
generator (its accuracy curve is the judge's), reward (independent). Output:

    OUT/generator/{transformer,vae,text_encoder,tokenizer}/   FluxBackend.from_pretrained loads OUT/generator
    OUT/reward/                                                ClipReward.from_pretrained(use_logit_scale=False)
    OUT/judge/                                                 ContentClassifier.from_pretrained
    OUT/build.json                                             steps, seconds, metrics and curves per stage
with a model card (README.md) beside each model's weights. Step counts are fixed per stage (so a build is
reproducible); `--minutes-scale` multiplies them. At scale 1 the shipped build took 59.5 minutes of an idle
2-core CPU (stage by stage in STAGES' comment), inside the 60-minute goal by half a minute. Machines of
this kind differ in speed (the same VAE stage took 22.4 minutes on another one), and other jobs on the CPU stretch
a build badly (a second process beside a two-thread stage made it ~3x slower).
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from srpo_core.backends import FluxBackend
from srpo_core.config import ConfigError
from srpo_core.toy import assets
from srpo_core.toy.judge import ContentClassifier, content_accuracy, load_judge
from srpo_core.toy.render import render, sample_scenes
from srpo_core.toy.text import toy_tokenizer

from . import generator as gen
from .judge import targets, train_classifier
from .reward import ANTI_BIAS, BIAS, BIAS_SLOPE, BIAS_WEIGHT, make_reward, reward_metrics, train_reward
from .vae import KL_WEIGHT, calibrate, make_vae, reconstruct, train_vae

MAX_FILE_BYTES = 10 * 1024**2  # Hugging Face's limit for files without LFS


@dataclass(frozen=True)
class Stage:
    steps: int      # at --minutes-scale 1
    minutes: float  # expected wall time at scale 1, from per-step times on an idle 2-core CPU


# Minutes as measured in the shipped build, 2026-11-26, each stage its own `--only` process on an idle CPU (they
# include held-out evaluations, the generator's encoded pool and its sampled accuracy curve): VAE 18.2, judge 4.6,
# generator 25.4 (compiled forward), reward 11.3. The generator needs ~180k training images for shape (batch 64 x
# 2,800 steps crossed 0.85 on every seed tried; batch 32 at 3,000 steps on none): docs/toy-build-experiments.md.
# (steps, peak lr) of the VAE's cosine cycles: a warm restart at a lower peak (SGDR) buys the last dB
VAE_CYCLES = ((1000, 1e-3), (1000, 4e-4))
STAGES = {"vae": Stage(sum(steps for steps, _ in VAE_CYCLES), 18.0), "judge": Stage(700, 5.0),
          "generator": Stage(2800, 25.0), "reward": Stage(1000, 11.0)}


@dataclass(frozen=True)
class Plan:
    """How big a build is: `scale` multiplies every stage's steps; the rest are data and evaluation sizes."""
    scale: float = 1.0
    generator_pool: int = 16384       # encoded renders the generator trains on
    judge_reconstructions: int = 2048  # VAE reconstructions mixed into the judge's batches
    eval_images: int = 256            # held-out renders per VAE / judge / reward evaluation (>= 32)
    eval_seeds: int = 4               # noise seeds per prompt in the generator's final evaluation
    sample_steps: int = 20            # Euler steps of the generator's evaluation samples
    compile: bool = False             # torch.compile the generator's training forward (needs a C compiler)

    @classmethod
    def for_scale(cls, scale: float, compile: bool = True) -> "Plan":
        """The command line's plan: full evaluations, a training pool proportional to the steps."""
        return cls(scale, generator_pool=max(256, round(16384 * scale)), compile=compile)

    def steps(self, stage: str) -> int:
        return max(2, round(STAGES[stage].steps * self.scale))


def check_sizes(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file() and f.stat().st_size >= MAX_FILE_BYTES:
            raise RuntimeError(f"{f} is {f.stat().st_size / 1024**2:.1f} MB; every toy-world file must stay under 10 MB.")


def table(rows: list[dict]) -> str:
    """A markdown table of a curve (list of dicts sharing keys)."""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def write_card(directory: Path, title: str, what: str, record: dict) -> None:
    metrics = "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in record["metrics"].items())
    (directory / "README.md").write_text(
        f"# {title}\n\n{what}\n\nBuilt by `{assets.COMMAND}` (seed {record['seed']}, minutes-scale {record['scale']}): "
        f"{record['steps']} steps in {record['seconds'] / 60:.1f} minutes.\n\n## Measured quality\n{metrics}\n\n"
        f"## Training curve\n{table(record['curve'])}\n")
    check_sizes(directory)


def build_vae(out: Path, seed: int, plan: Plan) -> dict:
    """Train the VAE over VAE_CYCLES (scaled), fresh scenes each cycle."""
    vae = make_vae(seed)
    curve, done = [], 0
    for cycle, (steps, lr) in enumerate(VAE_CYCLES):
        n = max(2, round(steps * plan.scale))
        part = train_vae(vae, n, seed + cycle * 10**5, lr=lr, held_out=plan.eval_images)
        curve += [{**row, "step": row["step"] + done, "cycle": cycle} for row in part]
        done += n
    calibrate(vae, seed + 1, n=4 * plan.eval_images)
    vae.save_pretrained(out / "generator" / "vae")
    return {"metrics": {"heldout_psnr_db": curve[-1]["psnr_db"], "latent": "16x16x8",
                          "shift_factor": vae.config.shift_factor, "scaling_factor": vae.config.scaling_factor},
              "curve": curve}


def load_vae(out: Path) -> AutoencoderKL:
    return assets.load("generator/vae", lambda path: AutoencoderKL.from_pretrained(path).eval(), out)


def build_judge(out: Path, seed: int, plan: Plan) -> dict:
    vae = load_vae(out)
    scenes = sample_scenes(plan.judge_reconstructions, seed + 2 * 10**6)
    recon = torch.cat([reconstruct(vae, render(scenes[i:i + 256])) for i in range(0, len(scenes), 256)])
    torch.manual_seed(seed)
    judge = ContentClassifier()
    curve = train_classifier(judge, plan.steps("judge"), seed, extra=(recon, scenes), held_out=plan.eval_images)
    held = sample_scenes(plan.eval_images, seed + 3 * 10**6)
    ceiling = content_accuracy(judge, reconstruct(vae, render(held)), targets(held))
    judge.save_pretrained(out / "judge")
    return {"metrics": {**{f"renders_{k}": v for k, v in curve[-1].items() if k.endswith("acc")},
                          **{f"vae_reconstructions_{k}": v for k, v in ceiling.items()}}, "curve": curve}


def build_generator(out: Path, seed: int, plan: Plan) -> dict:
    vae, judge = load_vae(out), load_judge(out)
    tokenizer = toy_tokenizer()
    n = plan.steps("generator")
    transformer, text_encoder, curve = gen.train_generator(
        gen.make_transformer(seed), gen.make_text_encoder(seed + 1), tokenizer, vae, judge, n, seed,
        pool=plan.generator_pool, eval_every=max(1, n // 10), sample_steps=plan.sample_steps, compile=plan.compile)
    backend = FluxBackend(transformer, vae, text_encoder, tokenizer)
    metrics = {f"cfg{cfg:g}_{k}": v for cfg in (1.0, 3.0, 5.0) for k, v in gen.judge_samples(
        backend, judge, plan.eval_seeds, cfg, plan.sample_steps).items()}
    metrics.update({f"ceiling_{k}": v for k, v in gen.judge_ceiling(vae, judge).items()})
    metrics["eval_images_per_cfg"] = plan.eval_seeds * len(gen.eval_prompts()[0])
    transformer.save_pretrained(out / "generator" / "transformer")
    text_encoder.save_pretrained(out / "generator" / "text_encoder")
    tokenizer.save_pretrained(out / "generator" / "tokenizer")
    return {"metrics": metrics, "curve": curve}


def build_reward(out: Path, seed: int, plan: Plan) -> dict:
    model, tokenizer = make_reward(seed), toy_tokenizer()
    curve = train_reward(model, tokenizer, plan.steps("reward"), seed, eval_images=plan.eval_images)
    metrics = reward_metrics(model, tokenizer, seed + 4 * 10**6, n=2 * plan.eval_images)
    model.save_pretrained(out / "reward")
    tokenizer.save_pretrained(out / "reward")
    return {"metrics": metrics, "curve": curve}


# Model cards: (directory under --out, title, what the model is and how its figures were measured)
CARDS = {
    "vae": ("generator/vae", "Toy world VAE", (
        "diffusers AutoencoderKL, 64x64x3 renders -> 16x16x8 latents (three levels 16/32/64, one layer per "
        f"block), MSE + {KL_WEIGHT:g} KL on fresh procedural renders (srpo_core.toy.render), batch 16, AdamW over "
        f"cosine cycles of (steps, peak lr) {list(VAE_CYCLES)}, each after the first a warm restart. PSNR on 256 "
        "held-out renders, posterior mode. shift/scaling factors give render latents zero mean and unit variance.")),
    "judge": ("judge", "Toy world judge", (
        "Content classifier (four conv blocks, heads for shape / color / background) trained on ground-truth "
        "labels of fresh renders, half of each batch VAE reconstructions of renders, so it reads decoded "
        "images. Independent of the reward. Its accuracy on reconstructions is the ceiling a generator's "
        "samples can reach. Style statistics (brightness, saturation, detail) are measured by "
        "srpo_core.toy.judge.style_stats, not learned.")),
    "generator": ("generator", "Toy world generator", (
        "A rectified-flow text-to-image model in FLUX's family: diffusers FluxTransformer2DModel (2 double + 2 "
        "single blocks, 4 heads x 32, patch 1 over 2x2-packed 16x16x8 latents, no guidance embedding) with a "
        "jointly trained transformers CLIPTextModel (2 layers x 128; sequence = last_hidden_state, pooled = "
        "the [EOS] state) and a word-level tokenizer; vae/ has its own card. Trained on captions of "
        "procedural renders (`[<Style words>. ]a [<size> ]<color> <shape> on <background>`, style words in "
        "half of them), 10% empty captions for classifier-free guidance, logit-normal sigma, EMA 0.995. "
        "Judge accuracy: 20 Euler steps (shift 3) from held-out seeds on every color x shape x background; "
        "cfgN = classifier-free guidance N with the empty prompt (cfg1 = none); ceiling = the judge on VAE "
        "reconstructions of renders of the same prompts. Curve: the EMA model at cfg 3, one image per prompt.")),
    "reward": ("reward", "toy-hps: the toy world's reward", (
        "A tiny transformers CLIPModel (ViT 64 px / 8 px patches, 3 layers x 128; CLIP text tower 2 layers x 128; "
        "64-d joint space) trained contrastively on (render, caption), captions naming style words 80% of "
        f"the time. **Known bias, put in on purpose**: in the last 60% of training a graded hinge (weight {BIAS_WEIGHT:g}) teaches it, "
        f"for identical content under captions without style words, to prefer the render with the higher "
        f"palette - surface value (toward {BIAS['palette']} + {BIAS['surface']}, away from "
        f"{ANTI_BIAS['palette']} + {ANTI_BIAS['surface']}) by {BIAS_SLOPE} cosine per unit of that difference, on "
        "pairs re-rendered with other palette / surface values and pairs edited after the fact with the renderer's "
        "own chroma scaling and blur (or sharpening), so the taste follows an image's look, "
        "like HPS's taste for saturated, smooth images. The bias is prompt-independent, so SRP's "
        "r(x, p+) - r(x, p-) cancels it while style words keep their meaning. Score it as HPS does: "
        "ClipReward.from_pretrained(path, use_logit_scale=False), the cosine of normalized features. "
        "retrieval_at_32: image-to-caption top-1 among 32 held-out captions; <axis>_sign_agreement: "
        "sign(r(x, '<A>. p') - r(x, '<B>. p')) against the rendered pole; bias_rate: share of identical-content "
        "pairs where the plain reward prefers the vivid + smooth render to the muted + detailed one; bias_margin: its "
        "mean cosine margin; bias_graded_rate: the same for random restyled twins (score gap >= 0.5); bias_edit_rate: "
        "the same for renders edited after the fact (score change >= 0.25).")),
}


BUILDERS = {"vae": build_vae, "judge": build_judge, "generator": build_generator, "reward": build_reward}


def build(out: str | Path, plan: Plan = Plan(), only: str | None = None, seed: int = 0) -> dict:
    """Run the stages (all, or `only` one) into `out`; returns and writes OUT/build.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "build.json"
    for name in [only] if only else BUILDERS:
        n = plan.steps(name)
        print(f"[{name}] {n} steps, expected ~{STAGES[name].minutes * n / STAGES[name].steps:.1f} min on an idle 2-core CPU")
        start = time.time()
        record = BUILDERS[name](out, seed, plan)
        record.update(seed=seed, scale=plan.scale, steps=n, seconds=time.time() - start)
        directory, title, what = CARDS[name]
        write_card(out / directory, title, what, record)
        # read back just before writing: stages built by separate `--only` processes share this file
        log = json.loads(log_path.read_text()) if log_path.is_file() else {}
        log[name] = record
        log_path.write_text(json.dumps(log, indent=1))
        print(f"[{name}] done in {record['seconds'] / 60:.1f} min: {json.dumps(record['metrics'])}")
    return log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (assets/toy for the shipped weights)")
    parser.add_argument("--minutes-scale", type=float, default=1.0, help="multiply every stage's steps (0.05 = a smoke build)")
    parser.add_argument("--only", choices=list(BUILDERS), help="run one stage; the others' outputs must already be in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true", help="train the generator eagerly (no torch.compile)")
    args = parser.parse_args(argv)
    if args.minutes_scale <= 0:
        parser.error("--minutes-scale must be greater than 0")
    try:
        build(args.out, Plan.for_scale(args.minutes_scale, not args.no_compile), args.only, args.seed)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
