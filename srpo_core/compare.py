"""The paper's comparison table in miniature: tune several presets (one step budget each), then evaluate the
base model and every tuned one on the same held-out prompts and seeds.

    result = compare.run(["toy-refl", "toy-draft", "toy-direct-align", "toy-srpo"], runs_root="runs/compare")
    print(compare.markdown(result))
"""

import math
from pathlib import Path

from tqdm.auto import tqdm

from . import config, evaluate
from .config import ConfigError
from .events import Failed, Finished, SessionFailed, StepMetrics
from .session import Session
from .toy.vocab import heldout_prompts

STATS = ("brightness", "saturation", "detail")


def train(preset: str, runs_root: str | Path, overrides: list[str] = ()) -> tuple[Path, float]:
    """Run one preset's session to the end: (run directory, seconds of tuning)."""
    cfg = config.load(preset, list(overrides))
    bar = tqdm(total=cfg.steps, desc=preset, unit="step")
    for event in Session(cfg, runs_root, preset=preset):
        if isinstance(event, StepMetrics):
            bar.update(1)
        if isinstance(event, Failed):
            error = ConfigError if event.bad_input else SessionFailed
            raise error(f"preset {preset} failed: {event.error}")
        if isinstance(event, Finished):
            bar.close()
            return event.run_dir, event.summary["seconds"]
    raise SessionFailed(f"preset {preset} stopped before finishing.")


def effect_size(row: dict, base: dict, stat: str) -> float:
    """Cohen's d of a judge statistic against the base row (difference of means over the pooled SD)."""
    a, b = row["judge"], base["judge"]
    pooled = math.sqrt((a[f"{stat}_sd"] ** 2 + b[f"{stat}_sd"] ** 2) / 2)
    return (a[stat] - b[stat]) / pooled if pooled > 0 else 0.0


def run(presets: list[str], runs_root: str | Path, prompts: list[str] | None = None, seeds: int = 2,
        overrides: list[str] = (), eval_overrides: list[str] = ("sample_steps=20",), progress=print) -> dict:
    """Tune each preset (with `overrides`, e.g. a shorter step budget), then evaluate base + tuned models with the
    first preset's config plus `eval_overrides` on `prompts` (default: the toy world's held-out prompts) x `seeds`."""
    eval_cfg = config.load(presets[0], list(eval_overrides))
    prompts = prompts or heldout_prompts()
    runs = []
    for preset in presets:
        progress(f"tuning {preset}")
        runs.append((preset, *train(preset, runs_root, overrides)))
    rows = []
    for name, run_dir, seconds in [("base", None, 0.0), *runs]:
        progress(f"evaluating {name} on {len(prompts)} prompts x {seeds} seeds")
        models = evaluate.load_models(eval_cfg, run_dir)
        rows.append({"method": name, "run_dir": str(run_dir) if run_dir else None, "seconds": seconds,
                     **evaluate.evaluate(models, eval_cfg, prompts, seeds)})
    if "judge" in rows[0]:
        for row in rows:
            row["effect_vs_base"] = {s: effect_size(row, rows[0], s) for s in STATS}
    return {"prompts": prompts, "seeds": seeds, "pos_words": eval_cfg.pos_words, "neg_words": eval_cfg.neg_words,
            "rows": rows}


def markdown(result: dict) -> str:
    """One row per method: plain and SRP reward, the judge's fields, effect sizes against base, and tuning seconds
    where the rows carry them (`eval`'s rows of existing runs have neither effect sizes nor seconds)."""
    judged = "judge" in result["rows"][0]
    timed = "seconds" in result["rows"][0]
    effects = "effect_vs_base" in result["rows"][0]
    head = ["method", "n", "reward", "SRP"]
    if judged:
        head += ["shape", "color", "background", *STATS]
    if effects:
        head += [f"d {s}" for s in STATS]
    if timed:
        head.append("seconds")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["method"], str(r["n"]), f"{r['reward_mean']:.4f}", f"{r['srp_mean']:.4f}"]
        if judged:
            j = r["judge"]
            cells += [fmt(j["shape_acc"]), fmt(j["color_acc"]), fmt(j["background_acc"]), *(fmt(j[s]) for s in STATS)]
        if effects:
            cells += [f"{r['effect_vs_base'][s]:+.2f}" for s in STATS]
        if timed:
            cells.append(f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
