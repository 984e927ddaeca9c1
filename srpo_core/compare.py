"""The paper's comparison table in miniature: tune several presets (one step budget each), then evaluate the
base model and every tuned one on the same held-out prompts and seeds.

    result = compare.run(["toy-refl", "toy-draft", "toy-direct-align", "toy-srpo"], runs_root="runs/compare")
    print(compare.markdown(result))
"""

import csv
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from tqdm.auto import tqdm

from . import config, evaluate
from .store import to_pil
from .config import ConfigError, RunConfig
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


def add_effects(rows: list[dict]) -> None:
    """On the toy world, each row's judge effect sizes against the first row (`effect_vs_base`)."""
    if "judge" in rows[0]:
        for row in rows:
            row["effect_vs_base"] = {s: effect_size(row, rows[0], s) for s in STATS}


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
    add_effects(rows)
    return {"prompts": prompts, "seeds": seeds, "pos_words": eval_cfg.pos_words, "neg_words": eval_cfg.neg_words,
            "rows": rows}


def table(result: dict) -> list[list[str]]:
    """The header and one row per method, as text cells: plain and SRP reward, the judge's fields, effect sizes
    against base, and tuning seconds where the rows carry them (`eval`'s rows of existing runs have neither)."""
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
    rows = [head]
    for r in result["rows"]:
        cells = [r["method"], str(r["n"]), f"{r['reward_mean']:.4f}", f"{r['srp_mean']:.4f}"]
        if judged:
            j = r["judge"]
            cells += [fmt(j["shape_acc"]), fmt(j["color_acc"]), fmt(j["background_acc"]), *(fmt(j[s]) for s in STATS)]
        if effects:
            cells += [f"{r['effect_vs_base'][s]:+.2f}" for s in STATS]
        if timed:
            cells.append(f"{r['seconds']:.0f}")
        rows.append(cells)
    return rows


def markdown(result: dict) -> str:
    """`table` as a markdown table."""
    head, *rows = table(result)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cells) + " |" for cells in rows])


def pairs(cfg: RunConfig, load, runs: list[str | Path | None], prompts: list[str], seeds: int) -> dict:
    """Model A against model B (None = the base model, else a run directory) on the same prompts x seeds, one model
    loaded at a time (`load(run)` -> Models): per side `eval`'s summary with its images and per-image rewards and
    SRP, and on the toy world each side's judge effect sizes against A."""
    rows = [{"method": Path(run).name if run else "base", "run_dir": str(run) if run else None,
             **evaluate.evaluate(load(run), cfg, prompts, seeds, keep_images=True)} for run in runs]
    add_effects(rows)
    return {"prompts": prompts, "seeds": seeds, "seed": cfg.seed, "pos_words": cfg.pos_words[:1],
            "neg_words": cfg.neg_words[:1], "rows": rows}


def grid_image(result: dict, tile: int = 128) -> Image.Image:
    """The pairs of `pairs` as one image: a row per (prompt, noise seed), A then B, each labelled with its reward and
    SRP (the first control words of the config)."""
    a, b = result["rows"][:2]
    n, label, head = len(a["rewards"]), 28, 16
    grid = Image.new("RGB", (2 * tile + 12, head + n * (tile + label) + 4), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), f"A: {a['method']}   B: {b['method']}", fill="black")
    for i in range(n):
        top = head + i * (tile + label) + 4
        prompt, seed = result["prompts"][i // result["seeds"]], result["seed"] + i % result["seeds"]
        draw.text((4, top), f"{prompt[:38]} · seed {seed}", fill="black")
        for col, side in enumerate((a, b)):
            left = 4 + col * (tile + 4)
            image = to_pil(side["images"][i]).resize((tile, tile), Image.NEAREST)
            grid.paste(image, (left, top + 12))
            draw.text((left + 2, top + 12 + tile - 12), f"{'AB'[col]} r {side['rewards'][i]:.3f} SRP {side['srps'][i]:+.3f}",
                      fill="white", stroke_width=1, stroke_fill="black")
    return grid


def csv_table(result: dict) -> str:
    """`table` as CSV."""
    out = io.StringIO()
    csv.writer(out).writerows(table(result))
    return out.getvalue()
