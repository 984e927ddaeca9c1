"""The headless contract: each command on the tiny preset, --json fields, and one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from srpo_core import cli

PROMPT = "a red circle on sky"
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "srpo_core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run_cli("train", "--preset", "tiny", "--set", "steps=5", "--set", "preview_every=0", "--out", str(out), "--json")


def test_train_json_and_run_directory(trained):
    run_dir = Path(trained["run_dir"])
    assert trained["steps"] == 5
    assert math.isfinite(trained["reward_first"]) and math.isfinite(trained["reward_last"])
    assert trained["seconds"] > 0
    assert Path(trained["lora_path"]).is_file() and Path(trained["lora_path"]).parent == run_dir
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 5
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 5
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


def test_sample_with_and_without_lora(trained, tmp_path):
    base = run_cli("sample", "--preset", "tiny", "--prompt", PROMPT, "--seed", "3", "--out", str(tmp_path / "base.png"), "--json")
    tuned = run_cli("sample", "--preset", "tiny", "--prompt", PROMPT, "--seed", "3", "--lora", trained["run_dir"],
                    "--out", str(tmp_path / "tuned.png"), "--json")
    a, b = Image.open(base["image"]), Image.open(tuned["image"])
    assert a.size == b.size == (32, 32)
    assert a.tobytes() != b.tobytes()


def test_recover_json_and_grid(tmp_path):
    out = run_cli("recover", "--preset", "tiny", "--prompt", PROMPT, "--sigmas", "0.1,0.5,0.9", "--out", str(tmp_path / "g.png"), "--json")
    assert out["sigmas"] == [0.1, 0.5, 0.9]
    assert len(out["direct_align_psnr"]) == len(out["one_step_psnr"]) == 3
    assert out["direct_align_psnr"][2] > out["one_step_psnr"][2]
    assert out["latent_gap_db"] == pytest.approx(out["predicted_gap_db"], abs=1e-3)
    assert Image.open(out["grid"]).size == (3 * 32 + 8, 3 * 32 + 8)


def test_score_json(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (220, 40, 40)).save(image)
    out = run_cli("score", "--preset", "tiny", "--image", str(image), "--prompt", PROMPT, "--pos", "Bright", "--neg", "Dark", "--json")
    assert out["srp"] == pytest.approx(out["reward_pos"] - out["reward_neg"], abs=1e-6)
    assert -1 <= out["reward"] <= 1  # the tiny reward is a cosine (scale 1)
    assert out["unknown_words"] == []


def test_eval_json_with_prompts_file(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on sky\na blue square on grass\n\n", encoding="utf-8")
    base = run_cli("eval", "--preset", "tiny", "--prompts", str(prompts), "--seeds", "2", "--json")
    tuned = run_cli("eval", "--preset", "tiny", "--prompts", str(prompts), "--seeds", "2", "--lora", trained["run_dir"], "--json")
    assert base["n"] == tuned["n"] == 4
    assert math.isfinite(base["reward_mean"]) and base["reward_mean"] != tuned["reward_mean"]


def test_fixtures_write_loadable_models(tmp_path):
    out = run_cli("fixtures", "--out", str(tmp_path), "--json")
    for key in ("model", "reward_model"):
        assert Path(out[key]).is_dir()
    assert (Path(out["model"]) / "transformer" / "config.json").is_file()
    # the fixtures load through the same path as real models and give the in-code tiny models' outputs
    from srpo_core import config, evaluate
    built = config.load("tiny", {"preview_every": 0})
    loaded = built.replace(backend="flux", model=out["model"])
    a = evaluate.generate(evaluate.load_models(built), built, [PROMPT], 0)
    b = evaluate.generate(evaluate.load_models(loaded), loaded, [PROMPT], 0)
    assert (a - b).abs().max() < 1e-5


def _bad_prompts(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    return str(path)


def _not_an_image(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("hello")
    return str(path)


@pytest.mark.parametrize("argv, needle", [
    (lambda t: ["train", "--preset", "nope"], "unknown preset 'nope'"),
    (lambda t: ["train", "--set", "nokey=1"], "unknown config key 'nokey'"),
    (lambda t: ["train", "--set", "lr=-1"], "lr must be greater than 0"),
    (lambda t: ["train", "--set", "steps=0"], "steps must be greater than 0"),
    (lambda t: ["train", "--set", "lora_rank=0"], "lora_rank must be greater than 0"),
    (lambda t: ["train", "--set", "train_sigma_range=0.9,0.2"], "low < high"),
    (lambda t: ["train", "--out", str(t / "f.txt" / "runs")], "cannot be created"),
    (lambda t: ["recover", "--prompt", PROMPT, "--sigmas", "0.5,1.5"], "strictly between 0 and 1"),
    (lambda t: ["sample", "--prompt", "   ", "--out", str(t / "x.png")], "prompt is empty"),
    (lambda t: ["eval", "--prompts", _bad_prompts(t)], "is not UTF-8"),
    (lambda t: ["score", "--image", str(t / "missing.png"), "--prompt", PROMPT], "does not exist"),
    (lambda t: ["score", "--image", _not_an_image(t), "--prompt", PROMPT], "is not an image"),
    (lambda t: ["train", "--set", "images_dir=" + str(t)], "holds no images"),
    (lambda t: ["sample", "--prompt", PROMPT], "the following arguments are required: --out"),
    (lambda t: ["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, argv, needle):
    (tmp_path / "f.txt").write_text("a file, not a folder")
    try:
        code = cli.main(argv(tmp_path))
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2  # bad input, whichever command refuses it (a session that fails while running exits 1)
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_bad_input_through_the_real_entry_point():
    proc = run_cli("train", "--preset", "tiny", "--set", "lr=0", ok=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: lr must be greater than 0 (got 0.0)."


def test_eval_grid_and_csv_of_two_models(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on sky\na blue square on grass\n", encoding="utf-8")
    grid, table = tmp_path / "grid.png", tmp_path / "table.csv"
    out = run_cli("eval", "--preset", "tiny", "--prompts", str(prompts), "--seeds", "1", "--lora", "base",
                  "--lora", "base", "--grid", str(grid), "--csv", str(table), "--json")
    assert out["grid"] == str(grid) and Image.open(grid).size[1] > 2 * 128
    rows = table.read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[1:] == rows[2].split(",")[1:]  # the same model twice
    proc = run_cli("eval", "--preset", "tiny", "--lora", "base", "--grid", str(grid), ok=False)
    assert proc.returncode == 2 and "give --lora twice" in proc.stderr
