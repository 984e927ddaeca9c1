"""Data-parallel training through `accelerate launch`: 2 CPU processes (gloo), the tiny preset."""

import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def test_two_processes_stay_in_sync_and_write_one_run(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "srpo_core", "train", "--preset", "tiny", "--set", "steps=3", "--set", "preview_every=2",
           "--out", str(tmp_path), "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, proc.stdout  # the main process alone reports
    result = json.loads(json_lines[0])
    runs = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert runs == [Path(result["run_dir"])]  # one run directory, from the main process
    run = runs[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # the LoRA weights of both processes are identical after every optimizer step
    assert all(r["replica_spread"] == 0.0 for r in rows), rows
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert (run / "previews" / "step_00002.png").is_file() and (run / "README.md").is_file()
    keys = load_file(run / "pytorch_lora_weights.safetensors")
    assert keys and all(k.startswith("transformer") and "lora" in k for k in keys)
