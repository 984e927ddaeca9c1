"""The app's named API, driven through gradio_client against the real server (tiny preset, CPU)."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from PIL import Image

from srpo_core import config, evaluate
from srpo_core.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on sky"


@pytest.fixture(scope="module")
def server(tmp_path_factory, launch_app):
    root = tmp_path_factory.mktemp("app")
    runs = root / "runs"
    demo, url = launch_app(runs)
    yield {"client": Client(url, verbose=False), "runs": runs, "root": root}
    demo.close()


def runs_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_named_endpoints(server):
    names = set(server["client"].view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/score", "/train", "/recover", "/compare", "/stop"} <= names


def test_generate_is_a_deterministic_image(server):
    c = server["client"]
    first, again = (np.asarray(Image.open(c.predict(PROMPT, 3, api_name="/generate"))) for _ in range(2))
    other = np.asarray(Image.open(c.predict(PROMPT, 4, api_name="/generate")))
    assert first.shape == (32, 32, 3) and first.std() > 0
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_score_equals_the_cli(server, tmp_path):
    c = server["client"]
    image = tmp_path / "image.png"
    shutil.copy(c.predict(PROMPT, 0, api_name="/generate"), image)
    got = c.predict(handle_file(str(image)), PROMPT, "Detailed", "Smooth", api_name="/score")
    cli = subprocess.run([sys.executable, "-m", "srpo_core", "score", "--preset", "tiny", "--image", str(image),
                          "--prompt", PROMPT, "--pos", "Detailed", "--neg", "Smooth", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    want = json.loads(cli.stdout.strip().splitlines()[-1])
    assert set(got) == set(want)
    for key in ("reward", "reward_pos", "reward_neg", "srp"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["srp"] == pytest.approx(got["reward_pos"] - got["reward_neg"], abs=1e-7)
    assert got["reward_pos"] != got["reward_neg"]


def test_recover_matches_the_library(server):
    grid, figure, table = server["client"].predict(PROMPT, 2, api_name="/recover")
    cfg = config.load("tiny")
    want, want_grid = evaluate.recover(evaluate.load_models(cfg), cfg, PROMPT, 2, [0.1, 0.3, 0.5, 0.7, 0.9])
    assert Image.open(grid).size == (want_grid.shape[2], want_grid.shape[1])
    assert table["sigmas"] == want["sigmas"]
    for key in ("direct_align_psnr", "one_step_psnr", "predicted_gap_db"):
        assert table[key] == pytest.approx(want[key], abs=1e-4), key
    assert all(d > o for d, o in zip(table["direct_align_psnr"], table["one_step_psnr"]))
    assert figure is not None


def test_train_streams_every_step_and_writes_the_run(server):
    c = server["client"]
    before = runs_in(server["runs"])
    job = c.submit("tiny", json.dumps({"preview_every": 2, "pos_words": ["Bright"]}), 4, api_name="/train")
    updates = list(job)
    steps_seen = {int(m.group(1)) for u in updates if (m := re.search(r"step (\d+)/4\*\*", str(u[1])))}
    assert steps_seen == {1, 2, 3, 4}
    run = job.result()[0]
    assert runs_in(server["runs"]) - before == {run}
    store = RunStore(server["runs"] / run)
    assert len((store.dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert store.status()["state"] == "finished" and store.status()["step"] == 4
    assert store.config().pos_words == ["Bright"] and store.config().preview_every == 2
    assert sorted(p.name for p in (store.dir / "previews").iterdir()) == ["step_00002.png", "step_00004.png"]
    assert store.lora_path.stat().st_size > 0


def test_cancelled_train_detaches_and_stop_leaves_a_valid_run(server):
    c = server["client"]
    job = c.submit("tiny", "{}", 300, api_name="/train")
    run = wait_for(lambda: next((o[0] for o in job.outputs() if o[0] and "step 2/" in (o[1] or "")), None))
    job.cancel()
    store = RunStore(server["runs"] / run)
    time.sleep(0.5)
    # The session belongs to the app: cancelling the call stops the streaming, not the training.
    assert store.status()["state"] == "running"
    assert c.predict(run, api_name="/stop").startswith("stopping")
    status = wait_for(lambda: (s := store.status())["state"] != "running" and s)
    assert status["state"] == "stopped" and 2 <= status["step"] < 300
    assert len(store.metrics()) == status["step"]
    assert store.config().steps == 300
    assert store.lora_path.is_file() and (store.dir / "README.md").is_file()


def test_device_events_wait_in_one_queue(server):
    c = server["client"]
    train = c.submit("tiny", "{}", 300, api_name="/train")
    run = wait_for(lambda: next((o[0] for o in train.outputs() if o[0] and "step 1/" in (o[1] or "")), None))
    gen = c.submit(PROMPT, 0, api_name="/generate")
    status = wait_for(lambda: (s := gen.status()).code == Status.IN_QUEUE and s, timeout=10)
    assert status.rank == 0
    c.predict(run, api_name="/stop")
    assert Path(gen.result(timeout=60)).is_file()
    assert train.result(timeout=60)[0] == run


def test_compare_base_with_a_run(server):
    c = server["client"]
    run = c.submit("tiny", json.dumps({"lr": 0.05}), 3, api_name="/train").result()[0]
    a, b, scores = c.predict(PROMPT, 5, "base", run, api_name="/compare")
    base = np.asarray(Image.open(c.predict(PROMPT, 5, api_name="/generate")))
    assert np.array_equal(np.asarray(Image.open(a)), base)
    assert not np.array_equal(np.asarray(Image.open(b)), base)
    assert scores["A"]["run"] == "base" and scores["B"]["run"] == run
    assert scores["A"]["reward"] != scores["B"]["reward"]
    same_a, same_b, same = c.predict(PROMPT, 5, "", "base", api_name="/compare")
    assert same["A"] == {**same["B"], "run": "base"}


def test_compare_base_with_a_full_finetune(server):
    """A full fine-tune has no adapter to switch off: Compare builds the base and swaps the tuned transformer in."""
    c = server["client"]
    run = c.submit("tiny", json.dumps({"lr": 0.002, "finetune": "full"}), 3, api_name="/train").result()[0]
    store = RunStore(server["runs"] / run)
    assert (store.full_dir / "diffusion_pytorch_model.safetensors").is_file() and not store.lora_path.exists()
    a, b, scores = c.predict(PROMPT, 5, "base", run, api_name="/compare")
    base = np.asarray(Image.open(c.predict(PROMPT, 5, api_name="/generate")))
    assert np.array_equal(np.asarray(Image.open(a)), base)
    assert not np.array_equal(np.asarray(Image.open(b)), base)
    assert scores["A"]["reward"] != scores["B"]["reward"]


@pytest.mark.parametrize("endpoint,args,message", [
    ("/generate", ("  ", 0), "prompt is empty"),
    ("/train", ("no-such-preset", "{}", 2), "unknown preset"),
    ("/train", (str(ROOT / "presets" / "tiny.yaml"), "{}", 2), "unknown preset"),
    ("/train", ("tiny", "{steps: 3", 2), "overrides must be a JSON object"),
    ("/train", ("tiny", "[1, 2]", 2), "overrides must be a JSON object"),
    ("/train", ("tiny", "{}", 0), "steps must be a whole number greater than 0"),
    ("/train", ("tiny", "{}", -3), "steps must be a whole number greater than 0"),
    ("/train", ("tiny", '{"lr": -1}', 2), "lr must be greater than 0"),
    ("/train", ("tiny", '{"optimizer": "sgd"}', 2), "optimizer must be one of"),
    ("/train", ("tiny", '{"no_such_key": 1}', 2), "unknown config key"),
    ("/recover", (PROMPT, 0, "base", "0.5, 2"), "sigmas must be"),
    ("/compare", (PROMPT, 0, "base", "not-a-run"), "is not a run"),
    ("/stop", ("not-a-run",), "is not a run in the runs folder"),
])
def test_bad_input_is_refused_in_one_sentence(server, endpoint, args, message):
    c = server["client"]
    before = runs_in(server["runs"])
    with pytest.raises(AppError, match=message):
        c.predict(*args, api_name=endpoint)
    assert runs_in(server["runs"]) == before
    assert Path(c.predict(PROMPT, 0, api_name="/generate")).is_file()


def test_score_refuses_a_file_that_is_not_an_image(server, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="cannot identify image file"):
        server["client"].predict(handle_file(str(text)), PROMPT, "Detailed", "Smooth", api_name="/score")


def test_score_refuses_a_huge_image_before_decoding_it(server, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (6400, 6400)).save(big)
    with pytest.raises(AppError, match="megapixels"):
        server["client"].predict(handle_file(str(big)), PROMPT, "Detailed", "Smooth", api_name="/score")


def test_steer_a_running_session_through_the_api(server):
    """/steer changes a running session's control words from its next step; metrics.jsonl logs them, the run's
    config.json records the schedule, and a name that is not training is refused."""
    c = server["client"]
    job = c.submit("tiny", "{}", 300, api_name="/train")
    run = wait_for(lambda: next((o[0] for o in job.outputs() if o[0] and "step 2/" in (o[1] or "")), None))
    note = c.predict(run, "Bright, Vivid", "Dark", api_name="/steer")
    step = int(re.match(r"from step (\d+): \+ Bright, Vivid / - Dark$", note).group(1))
    store = RunStore(server["runs"] / run)
    rows = wait_for(lambda: (m := store.metrics()) and m[-1].step >= step + 1 and m)
    assert all(r.pos_word in ("Bright", "Vivid") and r.neg_word == "Dark" for r in rows if r.step >= step)
    assert all(r.neg_word != "Dark" or r.pos_word == "Bright" for r in rows if r.step < step)  # tiny's own lists
    assert [r.step for r in rows if r.steered] == [step]
    assert store.config().word_schedule == [f"{step}:Bright|Vivid/Dark"]
    c.predict(run, api_name="/stop")
    wait_for(lambda: store.status()["state"] == "stopped")
    with pytest.raises(AppError, match="not training in this app"):
        c.predict(run, "Bright", "Dark", api_name="/steer")


def test_compare_grid_of_base_against_a_run(server):
    """/compare_grid: A vs B over prompts x seeds as one labelled PNG, a summary table and the same as CSV."""
    c = server["client"]
    run = c.predict("tiny", "{}", 2, api_name="/train")[0]
    prompts = "a red circle on sky\na blue square on grass"
    grid, table, (png, csv_file) = c.predict(prompts, 2, "base", run, api_name="/compare_grid")
    image = Image.open(grid)
    assert image.size[1] > 4 * 128 and Image.open(png).size == image.size  # 2 prompts x 2 seeds, a row a pair
    rows = Path(csv_file).read_text().splitlines()
    assert rows[0].startswith("method,n,reward,SRP") and [r.split(",")[:2] for r in rows[1:]] == [["base", "4"], [run, "4"]]
    assert [row[0] for row in table["data"]] == ["base", run]
    with pytest.raises(AppError, match="seeds must be a whole number from 1 to 16"):
        c.predict(prompts, 100, "base", run, api_name="/compare_grid")
