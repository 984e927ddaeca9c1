"""The app's shared lab object, without a server: run names resolve to one canonical run directory before any check,
and a damaged run directory neither breaks the runs list nor raises anything but a one-sentence refusal."""

import os
import time

import pytest

import app
from srpo_core import config
from srpo_core.config import ConfigError
from srpo_core.session import run
from srpo_core.store import RunStore


@pytest.fixture
def lab(tmp_path):
    lab = app.Lab("tiny", tmp_path / "runs", tmp_path / "user_presets")
    run(config.load("tiny", ["steps=1", "preview_every=0"]), lab.runs_dir)
    return lab


def test_a_running_session_cannot_be_deleted_under_any_spelling(lab):
    live = lab.start(config.load("tiny", ["steps=500", "preview_every=0"]), "tiny")
    deadline = time.monotonic() + 60
    while not live.run and time.monotonic() < deadline:  # until the session has its run directory
        time.sleep(0.05)
    name = live.run
    for spelling in (name, f"{name}/", f"./{name}", f"{name}/.", f"../{lab.runs_dir.name}/{name}"):
        assert lab.run_dir(spelling) == lab.runs_dir / name
        with pytest.raises(ConfigError, match="still training"):
            lab.delete(spelling)
    lab.stop(f"./{name}/")  # stopping resolves the same way
    assert live.done.wait(60)
    assert (lab.runs_dir / name / "metrics.jsonl").is_file()
    assert RunStore(lab.runs_dir / name).status()["state"] == "stopped"
    lab.delete(f"{name}/")
    assert not (lab.runs_dir / name).exists()
    for bad in ("", "..", "/etc", f"{name}\0", "missing"):
        with pytest.raises(ConfigError, match="is not a run in the runs folder"):
            lab.run_dir(bad)


def test_a_damaged_config_keeps_the_runs_list_working(lab):
    name = next(lab.runs_dir.iterdir()).name
    (lab.runs_dir / name / "config.json").write_text("[]")
    assert [value for _, value in lab.run_choices()] == [name]
    assert "?" in lab.run_choices()[0][0]
    with pytest.raises(ConfigError, match="is not a JSON object of config keys"):
        lab.run_cfg(name)
    (lab.runs_dir / name / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable config.json"):
        lab.run_cfg(name)


def test_a_run_still_starting_in_this_process_is_live_not_interrupted(lab):
    """Between its run directory and its first event a session is loading models: its run must not read as
    interrupted (which stopped the Runs tab from following it) nor be deletable."""
    name = next(lab.runs_dir.iterdir()).name
    store = RunStore(lab.runs_dir / name)
    store.set_status("starting", step=0, pid=os.getpid())
    assert lab.state(name) == "starting" and lab.is_live(name)
    with pytest.raises(ConfigError, match="still training"):
        lab.delete(name)
    store.set_status("running", step=1)  # running here but not one of this app's sessions: its process died
    assert lab.state(name) == "interrupted"
