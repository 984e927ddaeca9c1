"""Headless commands: train, sample, recover, score, eval, compare, export, fixtures, bench.

With --json a command prints one JSON object as the last line of stdout. Bad input prints one line
on stderr and exits 2; a run that fails prints one line and exits 1.
"""

import argparse
import json
import sys
from pathlib import Path

from . import config
from .config import ConfigError
from .events import SessionFailed


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump: the contract is "one clear line on stderr"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def emit(data: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        for k, v in data.items():
            print(f"{k:>20}: {v}")


def _cfg(args) -> config.RunConfig:
    return config.load(args.preset, getattr(args, "set", None) or [])


def _writable_file(path: str) -> Path:
    from .store import check_writable
    out = Path(path)
    check_writable(out.parent if str(out.parent) else Path("."))
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .events import Failed, Finished, Started, StepMetrics
    from .session import Session
    from .store import RunStore
    cfg = _cfg(args)
    bar = None
    session = Session(cfg, args.out, preset=args.preset)
    for event in session:
        if not session.is_main_process:
            continue
        if isinstance(event, Started):
            if not args.json:
                print(f"run {event.run_dir}  " + "  ".join(f"{k}={v}" for k, v in event.derived.items()), file=sys.stderr)
                bar = tqdm(total=cfg.steps, unit="step", file=sys.stderr)
        elif isinstance(event, StepMetrics) and bar is not None:
            bar.update(1)
            bar.set_postfix(reward=_num(event.record.reward), loss=_num(event.record.loss))
        elif isinstance(event, Failed):
            print(f"error: {event.error}", file=sys.stderr)
            return 2 if event.bad_input else 1
        elif isinstance(event, Finished):
            if bar is not None:
                bar.close()
            weights = RunStore(event.run_dir).weights_path(cfg)
            emit({"run_dir": str(event.run_dir), "steps": event.summary["steps"],
                  "reward_first": event.summary["reward_first"], "reward_last": event.summary["reward_last"],
                  "srp_last": event.summary["srp_last"], "lora_path": str(weights) if cfg.finetune == "lora" else None,
                  "weights_path": str(weights), "seconds": event.summary["seconds"]}, args.json)
    return 0


def cmd_sample(args) -> int:
    from . import evaluate
    from .store import save_image
    cfg = _cfg(args)
    prompt = evaluate.require_prompt(args.prompt)
    out = _writable_file(args.out)
    models = evaluate.load_models(cfg, args.lora)
    save_image(evaluate.generate(models, cfg, [prompt], args.seed)[0], out)
    emit({"image": str(out), "prompt": prompt, "seed": args.seed, "lora": args.lora}, args.json)
    return 0


def cmd_recover(args) -> int:
    from . import evaluate
    from .store import save_image
    cfg = _cfg(args)
    sigmas = evaluate.parse_sigmas(args.sigmas)
    prompt = evaluate.require_prompt(args.prompt)
    out = _writable_file(args.out) if args.out else None
    table, grid = evaluate.recover(evaluate.load_models(cfg, args.lora), cfg, prompt, args.seed, sigmas)
    if out:
        save_image(grid, out)
        table["grid"] = str(out)
    emit(table, args.json)
    return 0


def cmd_score(args) -> int:
    from . import evaluate
    from .store import from_pil
    cfg = _cfg(args)
    prompt = evaluate.require_prompt(args.prompt)
    image = evaluate.load_image(args.image)
    models = evaluate.load_models(cfg)
    pos = args.pos if args.pos is not None else cfg.pos_words[0] if cfg.pos_words else ""
    neg = args.neg if args.neg is not None else cfg.neg_words[0] if cfg.neg_words else ""
    emit(evaluate.score(models, from_pil(image, cfg.resolution).unsqueeze(0), prompt, pos, neg), args.json)
    return 0


def cmd_eval(args) -> int:
    from . import compare, evaluate
    from .data import read_prompts_file, training_prompts
    cfg = _cfg(args)
    if args.seeds <= 0:
        raise ConfigError(f"--seeds must be greater than 0 (got {args.seeds}).")
    prompts = read_prompts_file(args.prompts) if args.prompts else training_prompts(cfg)
    loras = args.lora or [None]
    if args.grid or args.csv:
        return _eval_pair(args, cfg, prompts, loras)
    rows = [{"preset": args.preset, "lora": lora, "method": lora or "base",
             **evaluate.evaluate(evaluate.load_models(cfg, None if lora == "base" else lora), cfg, prompts, args.seeds)}
            for lora in loras]
    if len(rows) == 1:
        emit(rows[0], args.json)
    elif args.json:
        emit({"rows": rows}, True)
    else:
        print(compare.markdown({"rows": rows}))
    return 0


def _eval_pair(args, cfg, prompts: list[str], loras: list[str]) -> int:
    """eval --grid / --csv: two models side by side over prompts x seeds."""
    from . import compare, evaluate
    if len(loras) != 2:
        raise ConfigError("--grid and --csv compare two models: give --lora twice ('base' for the untuned model).")
    grid = _writable_file(args.grid) if args.grid else None
    table = _writable_file(args.csv) if args.csv else None
    runs = [None if lora == "base" else lora for lora in loras]
    result = compare.pairs(cfg, lambda run: evaluate.load_models(cfg, run), runs, prompts, args.seeds)
    if grid:
        compare.grid_image(result).save(grid)
    if table:
        table.write_text(compare.csv_table(result), encoding="utf-8")
    rows = [{k: v for k, v in row.items() if k not in ("images", "rewards", "srps")} for row in result["rows"]]
    if args.json:
        emit({"rows": rows, "grid": str(grid) if grid else None, "csv": str(table) if table else None}, True)
    else:
        print(compare.markdown({"rows": rows}))
    return 0


def cmd_compare(args) -> int:
    from . import compare
    from .data import read_prompts_file
    from .store import check_writable
    if args.seeds <= 0:
        raise ConfigError(f"--seeds must be greater than 0 (got {args.seeds}).")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for p in presets:
        config.load(p, [])  # an unknown preset fails here, before any tuning
    out = check_writable(Path(args.out))
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    result = compare.run(presets, out, prompts, args.seeds, args.set or [], progress=lambda m: print(m, file=sys.stderr))
    table = compare.markdown(result)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "table.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.json:
        emit(result, True)
    else:
        print(table)
    return 0


def cmd_export(args) -> int:
    from .export import export
    path = export(args.run, args.format, args.out)
    emit({"path": str(path), "format": args.format}, args.json)
    return 0


def cmd_fixtures(args) -> int:
    from .fixtures import write_fixtures
    from .store import check_writable
    paths = write_fixtures(check_writable(Path(args.out)))
    emit({k: str(v) for k, v in paths.items()}, args.json)
    return 0


def cmd_bench(args) -> int:
    from . import bench
    if args.gpu:
        if (args.steps or 3) < 2 or args.memory_cap_gb < 0:
            raise ConfigError("--steps must be at least 2 and --memory-cap-gb 0 (no cap) or more with --gpu.")
        result = bench.run_full(args.preset, args.steps or 3, args.random_weights, args.memory_cap_gb, args.set or [])
        emit(result, args.json)
        return 0
    if (args.steps or 12) < 10:
        raise ConfigError(f"--steps must be at least 10 for a stable median (got {args.steps}).")
    result = bench.run(args.preset, args.steps or 12, args.warmup, args.compile)
    if not args.json:
        print(bench.table(result))
    else:
        emit(result, True)
    return 0


def build_parser() -> Parser:
    p = Parser(prog="python -m srpo_core", description="SRPO Studio: Direct-Align / SRPO preference tuning, headless.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name, fn, help, preset=True):
        c = sub.add_parser(name, help=help, description=help)
        if preset:
            c.add_argument("--preset", default=config.DEFAULT_PRESET,
                           help=f"preset name ({', '.join(config.preset_names())}) or a YAML/JSON file")
        c.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
        c.set_defaults(fn=fn)
        return c

    c = command("train", cmd_train, "Run a tuning session; writes runs/<id>/.")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    c.add_argument("--out", default="runs", help="runs root; the run gets its own folder inside (default: runs)")
    c = command("sample", cmd_sample, "Generate one image.")
    c.add_argument("--prompt", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--lora", help="a run directory whose tuned weights (LoRA or full) to load")
    c.add_argument("--out", required=True, help="output PNG file")
    c = command("recover", cmd_recover, "Per-timestep recoveries: one-step vs Direct-Align PSNR across sigma.")
    c.add_argument("--prompt", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--sigmas", default="0.1,0.3,0.5,0.7,0.9")
    c.add_argument("--lora", help="a run directory whose tuned weights (LoRA or full) to load")
    c.add_argument("--out", help="grid PNG (rows: noisy, one-step, Direct-Align)")
    c = command("score", cmd_score, "Reward of an image: r(p), r(p+), r(p-) and SRP.")
    c.add_argument("--image", required=True)
    c.add_argument("--prompt", required=True)
    c.add_argument("--pos", help="positive control word (default: the preset's first)")
    c.add_argument("--neg", help="negative control word (default: the preset's first)")
    c = command("eval", cmd_eval, "Mean reward (and, on the toy world, the judge) of generated images over prompts x seeds.")
    c.add_argument("--lora", action="append", help="a run directory whose tuned weights (LoRA or full) to load; repeat "
                                                   "it (and give 'base' for the untuned model) to compare runs in one table")
    c.add_argument("--prompts", help="UTF-8 text file, one prompt a line (default: the preset's prompts)")
    c.add_argument("--grid", help="with two --lora: a PNG of every pair side by side, labelled with reward and SRP")
    c.add_argument("--csv", help="with two --lora: the summary table as CSV")
    c.add_argument("--seeds", type=int, default=2)
    c = command("compare", cmd_compare, "The paper's table in miniature: tune each preset, then evaluate base and "
                                        "every tuned model on held-out prompts and seeds.", preset=False)
    c.add_argument("--presets", default="toy-refl,toy-draft,toy-direct-align,toy-srpo", help="comma-separated presets to tune")
    c.add_argument("--prompts", help="UTF-8 file of evaluation prompts (default: the toy world's 12 held-out prompts)")
    c.add_argument("--seeds", type=int, default=2, help="noise seeds per prompt")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key of every tuning run (repeatable)")
    c.add_argument("--out", default="runs/compare", help="runs root; table.md and table.json are written there")
    c = command("bench", cmd_bench, "Seconds per SRPO step against a bare torch loop, sampling speed, inspector latency, memory.")
    c.add_argument("--steps", type=int, help="measured steps (median; default 12, at least 10; with --gpu default 3)")
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--compile", action="store_true", help="torch.compile the session's transformer (the floor stays eager)")
    c.add_argument("--gpu", action="store_true", help="measure the preset at full size: peak memory per phase, seconds "
                                                      "per step and its split, sampling speed (on whatever device the "
                                                      "preset runs; tiny and fixture presets run it on a CPU)")
    c.add_argument("--random-weights", action="store_true", help="with --gpu: build the models from the shipped "
                                                                 "configurations with random weights (no download)")
    c.add_argument("--memory-cap-gb", type=float, default=0.0, help="with --gpu: cap this process's CUDA memory")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --gpu: override a config key (repeatable)")
    c = command("export", cmd_export, "Write a run's LoRA as diffusers or kohya (fluxgym, ComfyUI, Forge) safetensors.",
                preset=False)
    c.add_argument("run", help="a run directory")
    c.add_argument("--format", default="kohya", help="diffusers or kohya (default: kohya)")
    c.add_argument("--out", help="output file (default: RUN/lora_<format>.safetensors)")
    c = command("fixtures", cmd_fixtures, "Write tiny random models in the real on-disk formats.", preset=False)
    c.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SessionFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
