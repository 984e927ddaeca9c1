"""Multi-process training through `accelerate launch`: 2 CPU processes (gloo), the tiny preset, replicated (DDP)
and sharded (FSDP2, shard=true)."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from srpo_core import config
from srpo_core.models import build

ROOT = Path(__file__).resolve().parent.parent


def launch(out: Path, *overrides: str, config_file: str = "") -> subprocess.CompletedProcess:
    """`accelerate launch` of 2 processes: with one of configs/accelerate/, or plain --multi_gpu flags."""
    setup = ["--config_file", str(ROOT / "configs" / "accelerate" / config_file)] if config_file else \
        ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *setup, "--num_processes", "2", "--mixed_precision", "no",
           "-m", "srpo_core", "train", "--preset", "tiny", "--set", "steps=3", "--set", "preview_every=2",
           *[arg for o in overrides for arg in ("--set", o)], "--out", str(out), "--json"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def one_complete_run(proc: subprocess.CompletedProcess, out: Path) -> Path:
    """The run directory, after checking that the main process alone reported and wrote one complete run."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, proc.stdout  # the main process alone reports
    result = json.loads(json_lines[0])
    runs = [d for d in out.iterdir() if d.is_dir()]
    assert runs == [Path(result["run_dir"])]  # one run directory, from the main process
    run = runs[0]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert (run / "previews" / "step_00002.png").is_file() and (run / "README.md").is_file()
    assert not [p for p in run.rglob("*") if p.name.startswith(".")], "temp files left behind"
    return run


def test_two_processes_stay_in_sync_and_write_one_run(tmp_path):
    run = one_complete_run(launch(tmp_path), tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the LoRA weights of both processes are identical after every optimizer step
    assert all(r["replica_spread"] == 0.0 for r in rows), rows
    keys = load_file(run / "pytorch_lora_weights.safetensors")
    assert keys and all(k.startswith("transformer") and "lora" in k for k in keys)


def test_sharded_full_finetune_matches_replicated_training(tmp_path):
    """FSDP2 spreads one copy of the weights over the processes; the math is DDP's, so the weights must agree.
    Both runs use the README's launch configs (accelerate hands FSDP on CPU back to srpo_core's own sharding)."""
    runs = {}
    for shard, config_file in (("false", "ddp.yaml"), ("true", "fsdp.yaml")):
        out = tmp_path / f"shard-{shard}"
        runs[shard] = one_complete_run(launch(out, "finetune=full", config_file=config_file), out)
    weights = {k: load_file(run / "transformer" / "diffusion_pytorch_model.safetensors") for k, run in runs.items()}
    base = build(config.load("tiny")).backend.transformer.state_dict()
    assert weights["true"].keys() == weights["false"].keys() == base.keys()
    gap = max(float((weights["true"][k] - weights["false"][k]).abs().max()) for k in base)
    assert gap < 1e-5, f"sharded and replicated weights differ by {gap}"
    moved = sum(not torch.equal(weights["true"][k], base[k]) for k in base)
    assert moved > 0.9 * len(base), f"only {moved} of {len(base)} weights trained"
    rows = {k: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for k, run in runs.items()}
    assert all(r["replica_spread"] == 0.0 for r in rows["false"])  # replicas in sync
    assert all("replica_spread" not in r for r in rows["true"])  # one sharded copy: no replicas to compare


def test_sharded_refl_is_refused_before_any_run_directory(tmp_path):
    proc = launch(tmp_path, "shard=true", "method=refl")
    assert proc.returncode != 0
    assert "sharded training cannot run method refl" in proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
