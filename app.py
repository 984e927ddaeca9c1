"""SRPO Studio: the Gradio app over `srpo_core` (five tabs; named API endpoints /generate, /score,
/train, /recover, /compare and /stop).

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--preset NAME|FILE] [--runs-dir runs]

A tuning session belongs to the app, not to the browser tab that launched it: it runs in a worker
thread, so a refresh or a cancelled `/train` call only stops the watching; Stop (or `/stop`) ends it
after the step in progress and keeps its run directory. Everything that touches a model runs under
one device lock and in one queue group ("device") of concurrency 1, so events wait their turn with
a visible queue position.
"""

import argparse
import json
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

if __name__ == "__main__":
    import sys

    # Must be decided before gradio is imported: it reads the variable at import time.
    if "--analytics" not in sys.argv:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import plotly.graph_objects as go
import yaml
from plotly.subplots import make_subplots
from PIL import Image

from srpo_core import compare as comparison
from srpo_core import config, evaluate, srp
from srpo_core.config import ConfigError, RunConfig
from srpo_core.events import Failed, Finished, Preview, Started, StepMetrics, StepRecord
from srpo_core.models import Models
from srpo_core.data import training_prompts
from srpo_core.session import Session
from srpo_core.store import RunStore, from_pil, list_runs, to_pil
from srpo_core.toy.vocab import STYLE_AXES, heldout_prompts

DEVICE = "device"  # the queue group of every model-bound event
BASE = "base"
MAX_PIXELS = 40_000_000  # an upload above this is refused before PIL spends seconds decoding it
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The toy world's style words, plus two that real reward models know and the toy tokenizer does not,
# so the perception scan shows both outcomes out of the box.
SCAN_WORDS = ", ".join([w.capitalize() for pair in STYLE_AXES.values() for w in pair] + ["Realistic", "Cinematic"])
# Toy images are 32-64 px: show them scaled up with crisp pixels instead of as thumbnails.
CSS = (".pixels img { image-rendering: pixelated; }\n"
       ".fill img { width: 100%; height: 100%; object-fit: contain; }")
# Launch settings the tests share with __main__: show_error makes gradio's own input errors (an upload
# PIL cannot read fails in gr.Image's preprocessing, before any handler) visible as their message.
LAUNCH = {"css": CSS, "show_error": True}
CURVES = [("reward", "reward r(p)"), ("srp", "SRP reward"), ("loss", "loss"), ("grad_norm", "grad norm"),
          ("lr", "learning rate")]


# ---------------------------------------------------------------- app-wide state (one per demo)

@dataclass
class Live:
    """A session driven by a worker thread; its events arrive on `events`, None marks the end."""
    session: Session
    events: queue.Queue = field(default_factory=queue.Queue)
    run: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class TabState:
    """Per browser tab: the session this tab launched, so its Stop button can reach it. (A plain
    class: gradio serializes a dataclass state value into the page config.)"""

    def __init__(self):
        self.live: Live | None = None

    def release(self) -> None:
        self.live = None


class Lab:
    """What all tabs share: the runs folder, the device lock, one cached set of models, live sessions."""

    def __init__(self, preset: str, runs_dir: Path, user_presets: Path):
        self.preset, self.runs_dir, self.user_presets = preset, Path(runs_dir), Path(user_presets)
        self.cfg = config.load(preset)
        self.device = threading.Lock()
        self._lock = threading.Lock()
        self._live: dict[str, Live] = {}
        # One entry only: on a GPU a second FLUX-sized copy would not fit beside the first.
        self._cached: tuple[tuple, Models] | None = None

    # presets
    def preset_names(self) -> list[str]:
        user = sorted(p.stem for p in self.user_presets.glob("*.yaml")) if self.user_presets.is_dir() else []
        names = config.preset_names() + [n for n in user if n not in config.preset_names()]
        return names + ([self.preset] if self.preset not in names else [])

    def preset_ref(self, name: str) -> str:
        """A preset name -> what config.read_preset takes. Only names: the app's own preset (which
        may be a file, chosen by whoever launched it), shipped presets and user presets; a file path
        from a browser or API caller is refused, so no one can make the server parse their files."""
        user = self.user_presets / f"{name}.yaml"
        if name == self.preset or name in config.preset_names():
            return name
        if NAME_RE.match(name or "") and user.is_file():
            return str(user)
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(self.preset_names())}.")

    def save_words(self, name: str, pos: list[str], neg: list[str]) -> Path:
        name = name.strip()
        if not NAME_RE.match(name):
            raise ConfigError("a preset name uses letters, digits, '-', '_' or '.', and at most 64 characters.")
        if name in config.preset_names():
            raise ConfigError(f"{name!r} is a shipped preset and is never overwritten; choose another name.")
        self.user_presets.mkdir(parents=True, exist_ok=True)
        path = self.user_presets / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"pos_words": pos, "neg_words": neg}, sort_keys=False), encoding="utf-8")
        return path

    # runs
    def run_dir(self, name: str) -> Path:
        """The one canonical directory a run name resolves to ("<run>/" and "./<run>" are "<run>"), or a refusal."""
        path = (self.runs_dir / name).resolve() if name and "\0" not in name else None
        if path is None or path.parent != self.runs_dir.resolve() or not (path / "config.json").is_file():
            raise ConfigError(f"{name!r} is not a run in the runs folder; pick one from the list.")
        return self.runs_dir / path.name

    def is_live(self, name: str) -> bool:
        """Training now, here or in another process (a CLI run writes the same status.json)."""
        if name in self._live:
            return True
        status = RunStore(self.runs_dir / name).status()
        pid = status.get("pid")
        if status.get("state") not in ("starting", "running") or not pid:
            return False
        if pid == os.getpid():
            # this process's running sessions are in _live; one still starting (run directory written, first event
            # not yet out) is live too: a session that fails marks its run failed
            return status.get("state") == "starting"
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def state(self, name: str) -> str:
        state = RunStore(self.runs_dir / name).status().get("state", "unknown")
        return "interrupted" if state in ("starting", "running") and not self.is_live(name) else state

    def run_choices(self, with_base: bool = False) -> list[tuple[str, str]]:
        rows = []
        for store in list_runs(self.runs_dir):
            status = store.status()
            try:
                total = store.config().steps
            except (ValueError, OSError):  # a hand-edited or half-copied config still lists the run
                total = "?"
            rows.append((f"{store.name} · {self.state(store.name)} · {status.get('step', 0)}/{total}", store.name))
        return ([("base model", BASE)] if with_base else []) + rows

    def live_session(self, name: str) -> Session:
        name = self.run_dir(name).name
        live = self._live.get(name)
        if live is None:
            raise ConfigError(f"run {name} is not training in this app, so there is nothing here to stop or steer.")
        return live.session

    def stop(self, name: str) -> None:
        self.live_session(name).stop()

    def steer(self, name: str, pos_text: str, neg_text: str) -> tuple[int, list[str], list[str]]:
        """New control words for a running session from its next step: (that step, positive, negative words)."""
        (pos, _), (neg, _) = clean_words(pos_text), clean_words(neg_text)
        return self.live_session(name).steer(pos, neg), pos, neg

    def delete(self, name: str) -> None:
        path = self.run_dir(name)
        name = path.name  # every check below sees the canonical name, however the caller spelled it
        if self.is_live(name):
            raise ConfigError(f"run {name} is still training; stop it first, then delete it.")
        shutil.rmtree(path)

    # sessions
    def start(self, cfg: RunConfig, preset: str) -> Live:
        live = Live(Session(cfg, self.runs_dir, preset=preset))
        threading.Thread(target=self._drive, args=(live,), name="srpo-session", daemon=True).start()
        return live

    def _drive(self, live: Live) -> None:
        try:
            with self.device:
                self._cached = None  # the session builds its own models; free the cached ones first
                for event in live.session:
                    if isinstance(event, Started):
                        live.run = event.run_dir.name
                        with self._lock:
                            self._live[live.run] = live
                    live.events.put(event)
        finally:
            with self._lock:
                self._live.pop(live.run, None)
            live.done.set()
            live.events.put(None)

    # models (callers hold self.device)
    def models(self, cfg: RunConfig, run: str = "") -> Models:
        tuned = self.run_dir(run) if run and run != BASE else None
        weights = RunStore(tuned).weights_path(self.run_cfg(run)) if tuned else None
        key = (cfg.backend, cfg.model, cfg.reward, cfg.reward_model, cfg.device,
               str(tuned), weights and weights.exists() and weights.stat().st_mtime)
        if self._cached is None or self._cached[0] != key:
            self._cached = None
            self._cached = (key, evaluate.load_models(cfg, tuned))
        return self._cached[1]

    def run_cfg(self, run: str) -> RunConfig:
        return RunStore(self.run_dir(run)).config() if run and run != BASE else self.cfg


# ---------------------------------------------------------------- pure helpers (no gradio state)

def words_to_text(words) -> str:
    return ", ".join(map(str, words))


def clean_words(text: str) -> tuple[list[str], str]:
    """Comma-separated words -> (unique non-empty words in order, a note on what was dropped)."""
    raw = (text or "").split(",") if (text or "").strip() else []
    given = [w.strip() for w in raw if w.strip()]
    words = list(dict.fromkeys(given))
    notes = []
    if len(given) > len(words):
        notes.append(f"{len(given) - len(words)} duplicate(s)")
    if len(raw) > len(given):
        notes.append(f"{len(raw) - len(given)} empty entr{'ies' if len(raw) - len(given) > 1 else 'y'}")
    return words, (f"ignored {' and '.join(notes)}" if notes else "")


def finite(value):
    """JSON for the browser: inf/nan become None (JSON.parse refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value


def curves_figure(rows: list[StepRecord]) -> go.Figure:
    titles = [t for _, t in CURVES] + ["reward against sigma"]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.22)
    steps = [r.step for r in rows]
    for i, (key, title) in enumerate(CURVES):
        fig.add_trace(go.Scatter(x=steps, y=[getattr(r, key) for r in rows], mode="lines+markers", name=title,
                                 marker={"size": 4}), row=i // 3 + 1, col=i % 3 + 1)
    fig.add_trace(go.Scatter(x=[r.sigma for r in rows], y=[r.reward for r in rows], mode="markers",
                             name="reward vs sigma", marker={"color": steps, "colorscale": "Viridis", "size": 7,
                                                             "colorbar": {"title": "step", "thickness": 10}}),
                  row=2, col=3)
    for step in [r.step for r in rows if r.steered]:  # where steering changed the control words
        for i in range(len(CURVES)):
            fig.add_vline(x=step - 0.5, line_dash="dot", line_color="#9333ea", row=i // 3 + 1, col=i % 3 + 1)
    fig.update_xaxes(title_text="step", row=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=2)
    fig.update_xaxes(title_text="sigma", row=2, col=3)
    lrs = [r.lr for r in rows]
    # A constant schedule is a flat line, and plotly's autorange would centre it on a meaningless span.
    fig.update_yaxes(exponentformat="e", range=[0, 1.25 * max(lrs)] if lrs and max(lrs) > 0 else None, row=2, col=2)
    fig.update_layout(height=480, showlegend=False, margin={"l": 50, "r": 20, "t": 40, "b": 40})
    return fig


def score_figure(result: dict, pos: str, neg: str) -> go.Figure:
    labels = ["r(p)", f"r(p+) {pos}", f"r(p-) {neg}", "SRP"]
    values = [result["reward"], result["reward_pos"], result["reward_neg"], result["srp"]]
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color=["#64748b", "#16a34a", "#dc2626", "#4f46e5"],
                           text=[f"{v:+.4f}" for v in values], textposition="outside", cliponaxis=False))
    fig.update_layout(height=300, margin={"l": 40, "r": 20, "t": 30, "b": 40}, yaxis_title="reward")
    return fig


def scan_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure(go.Bar(
        y=[r["word"] + (" (unknown)" if r["unknown"] else "") for r in rows], x=[r["effect"] for r in rows],
        orientation="h", marker_color=["#94a3b8" if r["unknown"] else ("#16a34a" if r["effect"] > 0 else "#dc2626")
                                       for r in rows],
        text=[f"{r['effect']:+.4f}" for r in rows], textposition="outside"))
    fig.update_layout(height=max(240, 34 * len(rows)), margin={"l": 40, "r": 40, "t": 30, "b": 40},
                      xaxis_title="r(word. p) - r(p)", yaxis={"autorange": "reversed"})
    return fig


def psnr_figure(table: dict) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=table["sigmas"], y=table["direct_align_psnr"], name="Direct-Align", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=table["sigmas"], y=table["one_step_psnr"], name="naive one-step", mode="lines+markers"))
    fig.update_layout(height=340, xaxis_title="sigma", yaxis_title="PSNR vs clean sample (dB)",
                      margin={"l": 50, "r": 20, "t": 30, "b": 40})
    return fig


def progress_text(step: int, total: int, started: float, record: StepRecord) -> str:
    elapsed = time.perf_counter() - started
    eta = elapsed / step * (total - step) if step else float("nan")
    num = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731  (None: not finite, or no control words)
    return (f"**step {step}/{total}** · {elapsed:.1f} s elapsed · ETA {eta:.1f} s · "
            f"reward {num(record.reward)} · SRP {num(record.srp)} · loss {num(record.loss)} · "
            f"words + {record.pos_word or '-'} / - {record.neg_word or '-'}")


def image_tensor(path: str | None, resolution: int):
    """An image file -> (1, 3, R, R), read exactly as `python -m srpo_core score` reads it; a huge
    upload is refused from its header, before PIL spends seconds decoding it."""
    if not path:
        raise ConfigError("no image yet: generate one or upload one.")
    with Image.open(path) as probe:  # gr.Image's preprocessing has already refused files PIL cannot open
        width, height = probe.size
    if width * height > MAX_PIXELS:
        raise ConfigError(f"the image is {width}x{height} pixels; upload one under {MAX_PIXELS // 1_000_000} "
                          "megapixels (it is scaled down to the model's resolution anyway).")
    with evaluate.load_image(path) as image:
        return from_pil(image, resolution).unsqueeze(0)


def crisp(image, side: int = 256):
    """Nearest-neighbour upscale for display, so a 32 px toy image reads as pixels, not blur."""
    image = Image.fromarray(image) if not isinstance(image, Image.Image) else image
    factor = max(1, side // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def whole_number(value, name: str, least: int, most: int | None = None) -> int:
    """A whole number from a form field or API argument, or a one-sentence refusal naming the allowed range."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number == int(number) and least <= number <= (most or math.inf)):
        allowed = f"from {least} to {most}" if most else f"greater than {least - 1}"
        raise ConfigError(f"{name} must be a whole number {allowed} (got {value!r}).")
    return int(number)


def form_value(value):
    return words_to_text(value) if isinstance(value, (list, tuple)) else value


def field_component(f, value) -> gr.components.Component:
    """A form field from the schema: Literal -> Dropdown, bool -> Checkbox, numbers -> Number, lists -> Textbox."""
    hint, kw = get_type_hints(RunConfig)[f.name], {"label": f.name, "info": f.metadata["help"], "value": form_value(value)}
    if get_origin(hint) is Literal:
        return gr.Dropdown(choices=list(get_args(hint)), **kw)
    if hint is bool:
        return gr.Checkbox(**kw)
    if hint in (int, float):
        return gr.Number(precision=0 if hint is int else None, **kw)
    if get_origin(hint) in (list, tuple):
        return gr.Textbox(**{**kw, "info": kw["info"] + " (comma-separated)"})
    return gr.Textbox(**kw)


def fail(e: Exception):
    """The one-sentence message of a refused input, as a visible error that leaves the app running."""
    return gr.Error(str(e), print_exception=False)


# ---------------------------------------------------------------- the app

def build_demo(preset: str = config.DEFAULT_PRESET, runs_dir: str | Path = "runs",
               user_presets: str | Path | None = None) -> gr.Blocks:
    """The five-tab app over a runs folder; `preset` is the model world used for inference and the
    default of the Tune form. User control-word presets go to `user_presets` (default: a
    `user_presets` folder beside the runs folder), never into the shipped presets/."""
    runs_dir = Path(runs_dir)
    lab = Lab(preset, runs_dir, Path(user_presets) if user_presets else runs_dir.resolve().parent / "user_presets")
    schema = list(fields(RunConfig))
    defaults = lab.cfg.to_dict()
    default_prompt = lab.cfg.preview_prompt or training_prompts(lab.cfg)[0]
    grid_default = (heldout_prompts() if lab.cfg.backend == "toy" else training_prompts(lab.cfg))[:4]
    device_queue = {"concurrency_limit": 1, "concurrency_id": DEVICE}
    free = {"concurrency_limit": None}

    # -------- handlers: control words
    def generate(prompt: str, seed: float):
        """Generate one image with the base model of the app's preset."""
        try:
            prompt = evaluate.require_prompt(prompt)
            seed = int(seed or 0)
            with lab.device:
                models = lab.models(lab.cfg)
                unknown = models.backend.unknown_words(prompt)
                image = evaluate.generate(models, lab.cfg, [prompt], seed)[0]
        except ConfigError as e:
            raise fail(e) from None
        if unknown:
            what = "not toy-world words" if lab.cfg.backend == "toy" else "unknown to its tokenizer"
            gr.Warning(f"The generator does not know: {', '.join(unknown)} ({what}); they read as an unknown token.")
        return to_pil(image)

    def score(image: str | None, prompt: str, pos: str, neg: str) -> dict:
        """r(p), r(p+), r(p-) and SRP of an image file, as `python -m srpo_core score` computes them."""
        try:
            tensor = image_tensor(image, lab.cfg.resolution)
            with lab.device:
                return evaluate.score(lab.models(lab.cfg), tensor, prompt, (pos or "").strip(), (neg or "").strip())
        except ConfigError as e:
            raise fail(e) from None

    def show_score(result: dict, pos: str, neg: str):
        unknown = result.get("unknown_words") or []
        toy = " (not toy-world words)" if lab.cfg.reward == "toy-hps" else ""
        note = f"⚠️ The reward model does not know: **{', '.join(unknown)}**{toy}." if unknown else ""
        return score_figure(result, pos, neg), note

    def scan(image: str | None, prompt: str, words: str):
        try:
            items, _ = clean_words(words)
            if not items:
                raise ConfigError("the scan needs at least one word.")
            tensor = image_tensor(image, lab.cfg.resolution)
            rows = []
            with lab.device:
                models = lab.models(lab.cfg)
                for word in items:
                    s = evaluate.score(models, tensor, prompt, word, "")
                    rows.append({"word": word, "effect": s["reward_pos"] - s["reward"],
                                 "unknown": bool(s["unknown_words"])})
        except ConfigError as e:
            raise fail(e) from None
        return scan_figure(rows)

    def apply_words(pos_text: str, neg_text: str, pos_now: str, neg_now: str):
        pos, pos_note = clean_words(pos_text)
        neg, neg_note = clean_words(neg_text)
        notes = [f"{which} list: {note}" for which, note in (("positive", pos_note), ("negative", neg_note)) if note]
        note = ("⚠️ " + "; ".join(notes) + ".") if notes else ""
        return (gr.Dropdown(choices=pos, value=pos_now if pos_now in pos else (pos[0] if pos else "")),
                gr.Dropdown(choices=neg, value=neg_now if neg_now in neg else (neg[0] if neg else "")),
                words_to_text(pos), words_to_text(neg), note)

    def load_words(name: str):
        try:
            data = config.read_preset(lab.preset_ref(name))
        except ConfigError as e:
            raise fail(e) from None
        pos, neg = data.get("pos_words", defaults["pos_words"]), data.get("neg_words", defaults["neg_words"])
        return words_to_text(pos), words_to_text(neg)

    def save_words(name: str, pos_text: str, neg_text: str):
        try:
            pos, neg = clean_words(pos_text)[0], clean_words(neg_text)[0]
            path = lab.save_words(name, pos, neg)
        except ConfigError as e:
            raise fail(e) from None
        gr.Info(f"Saved control words as {path.stem} ({path}).")
        names = lab.preset_names()
        return gr.Dropdown(choices=names, value=path.stem), gr.Dropdown(choices=names)

    # -------- handlers: tune
    def fill_form(name: str):
        try:
            cfg = config.load(lab.preset_ref(name))
        except ConfigError as e:
            raise fail(e) from None
        values = cfg.to_dict()
        return [form_value(values[f.name]) for f in schema]

    def prepare(name: str, tab: TabState, *values):
        """Form -> the JSON overrides of the preset that /train receives; refuses bad values up front."""
        if tab.live and not tab.live.done.is_set():
            raise gr.Error(f"A session is already running in this tab ({tab.live.run or 'starting'}); "
                           "stop it or wait for it to end.", print_exception=False)
        form = {f.name: v for f, v in zip(schema, values) if f.name != "steps"}
        try:
            base = config.load(lab.preset_ref(name)).to_dict()
            cfg = config.from_dict({**base, **form, "steps": 1})
        except ConfigError as e:
            raise fail(e) from None
        changed = {k: v for k, v in cfg.to_dict().items() if k != "steps" and v != base[k]}
        return json.dumps(changed, indent=1)

    def train(preset_name: str, overrides: str, steps: float, tab: TabState):
        """Run a tuning session; streams (run, progress, curves, previews) at least once per step and
        ends with the run directory's name. Cancelling the call stops the streaming, not the run."""
        try:
            try:
                extra = json.loads(overrides or "{}")
            except json.JSONDecodeError as e:
                raise ConfigError(f"overrides must be a JSON object of config keys ({e.msg} at line {e.lineno}).") from None
            if not isinstance(extra, dict):
                raise ConfigError("overrides must be a JSON object of config keys, like {\"lr\": 0.001}.")
            steps = whole_number(steps, "steps", 1)
            cfg = config.load(lab.preset_ref(preset_name), {**extra, "steps": steps})
        except ConfigError as e:
            raise fail(e) from None
        tab.live = live = lab.start(cfg, preset_name)
        rows, previews, run, started, drawn = [], [], "", time.perf_counter(), 0.0
        text = "starting: building the models (waits while another session holds the device)…"
        yield run, text, gr.skip(), gr.skip()
        while (event := live.events.get()) is not None:
            figure, gallery = gr.skip(), gr.skip()
            if isinstance(event, Started):
                run, started = event.run_dir.name, time.perf_counter()
                text = f"**{run}** started · " + " · ".join(f"{k} {v}" for k, v in event.derived.items())
                figure, gallery = curves_figure([]), []
            elif isinstance(event, StepMetrics):
                rows.append(event.record)
                text = progress_text(event.step, event.total, started, event.record)
                # Redrawing six subplots costs ~0.1 s; once a second keeps fast steps streaming.
                if time.perf_counter() - drawn > 1.0 or event.step == event.total:
                    figure, drawn = curves_figure(rows), time.perf_counter()
            elif isinstance(event, Preview):
                previews.append((str(event.path), f"step {event.step}"))
                gallery = list(previews)
            elif isinstance(event, Finished):
                s = event.summary
                text = (f"**{run}** {'stopped' if event.stopped else 'finished'} after {s['steps']} steps in "
                        f"{s['seconds']} s of training · reward {s['reward_first']} → {s['reward_last']}")
                figure, gallery = curves_figure(rows), list(previews)
            elif isinstance(event, Failed):
                raise gr.Error(f"The session failed: {event.error}", print_exception=False)
            else:
                continue
            yield run, text, figure, gallery

    def stop_tab(tab: TabState):
        if tab.live is None or tab.live.done.is_set():
            gr.Warning("No session of this tab is running; a session from another tab can be stopped in Runs.")
            return gr.skip()
        tab.live.session.stop()
        return "stopping after the step in progress…"

    def stop_run(name: str) -> str:
        """Stop a run of this app by its directory name; it ends after the step in progress."""
        try:
            lab.stop(name)
        except ConfigError as e:
            raise fail(e) from None
        return f"stopping {name} after the step in progress…"

    def steer(name: str, pos_text: str, neg_text: str) -> str:
        """Change a running session's control words (comma-separated) from its next step on; the run records the
        change in its config.json, so a replay reproduces it."""
        try:
            step, pos, neg = lab.steer(name, pos_text, neg_text)
        except ConfigError as e:
            raise fail(e) from None
        return f"from step {step}: + {', '.join(pos)} / - {', '.join(neg)}"

    # -------- handlers: recoveries and compare
    def recover(prompt: str, seed: float, model: str = BASE, sigmas: str = "0.1, 0.3, 0.5, 0.7, 0.9"):
        """Noisy / naive one-step / Direct-Align recoveries across sigma, with their PSNR."""
        try:
            prompt, values = evaluate.require_prompt(prompt), evaluate.parse_sigmas(sigmas)
            cfg = lab.run_cfg(model)
            with lab.device:
                table, grid = evaluate.recover(lab.models(cfg, model), cfg, prompt, int(seed or 0), values)
        except ConfigError as e:
            raise fail(e) from None
        return to_pil(grid), psnr_figure(table), finite(table)

    def compare(prompt: str, seed: float, run_a: str = BASE, run_b: str = "", pos: str = "", neg: str = ""):
        """The same prompt and seed through run A and run B ("" or "base" = the base model), each scored."""
        try:
            prompt = evaluate.require_prompt(prompt)
            run_a, run_b = run_a or BASE, run_b or BASE
            cfg = lab.run_cfg(run_a if run_a != BASE else run_b)
            pos = (pos or srp.pick_words(cfg.pos_words, 0)).strip()
            neg = (neg or srp.pick_words(cfg.neg_words, 0)).strip()
            images, scores = [], {}
            with lab.device:
                for side, run in (("A", run_a), ("B", run_b)):
                    models = lab.models(cfg, run)
                    image = evaluate.generate(models, cfg, [prompt], int(seed or 0))
                    images.append(to_pil(image[0]))
                    scores[side] = {"run": run, **evaluate.score(models, image, prompt, pos, neg)}
                    if models.judge is not None:
                        scores[side].update(evaluate.judge_images(models, image, [prompt]))
        except ConfigError as e:
            raise fail(e) from None
        return images[0], images[1], scores

    def compare_grid(prompts_text: str, seeds: float, run_a: str, run_b: str):
        """A against B over prompts (one a line) x seeds: the labelled pairs as one PNG, the summary table (on the
        toy world with the judge and its effect sizes of each side against A), and both as downloads."""
        try:
            prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
            if not prompts:
                raise ConfigError("give at least one prompt, one a line.")
            seeds = whole_number(seeds, "seeds", 1, 16)
            runs = [None if not run or run == BASE else lab.run_dir(run) for run in (run_a, run_b)]
            with lab.device:
                result = comparison.pairs(lab.cfg, lambda run: lab.models(lab.cfg, run.name if run else ""),
                                          runs, prompts, seeds)
        except ConfigError as e:
            raise fail(e) from None
        folder = Path(tempfile.mkdtemp(prefix="srpo-compare-"))
        grid_path, csv_path = folder / "compare_grid.png", folder / "compare_table.csv"
        comparison.grid_image(result).save(grid_path)
        csv_path.write_text(comparison.csv_table(result), encoding="utf-8")
        head, *rows = comparison.table(result)
        return str(grid_path), {"headers": head, "data": rows}, [str(grid_path), str(csv_path)]

    # -------- handlers: runs
    def refresh_lists(selected: str | None = None):
        runs = lab.run_choices()
        names = [v for _, v in runs]
        pick = selected if selected in names else (names[0] if names else None)
        with_base = lab.run_choices(with_base=True)
        return (gr.Dropdown(choices=runs, value=pick), gr.Dropdown(choices=with_base),
                gr.Dropdown(choices=with_base), gr.Dropdown(choices=with_base))

    def after_session(run: str):
        """A session ended: every run list learns of it (the Runs tab shows it), and Tune offers the comparison with
        the base model."""
        return (*refresh_lists(run), gr.Button(visible=bool(run)))

    def slider_pair(a, b):
        return crisp(a), crisp(b)

    def compare_with_base(run: str):
        return gr.Tabs(selected="compare"), gr.Dropdown(value=BASE), gr.Dropdown(value=run)

    def show_run(name: str | None):
        if not name:
            return "No runs yet: launch one in Tune.", curves_figure([]), [], {}, None, gr.Timer(active=False)
        try:
            store = RunStore(lab.run_dir(name))
            run_cfg = store.config()
            cfg = run_cfg.to_dict()
        except (ConfigError, OSError, json.JSONDecodeError) as e:
            return f"⚠️ {e}", curves_figure([]), [], {}, None, gr.Timer(active=False)
        status, state, rows = store.status(), lab.state(name), store.metrics()
        previews = [(str(p), p.stem.replace("_", " ")) for p in sorted((store.dir / "previews").glob("*.png"))]
        summary = status.get("summary") or {}
        text = (f"**{name}** · {state} · step {status.get('step', 0)}/{cfg['steps']} · preset `{status.get('preset', '')}`"
                + (f" · reward {summary.get('reward_first')} → {summary.get('reward_last')}" if summary else "")
                + (f"\n\n⚠️ {status['error']}" if status.get("error") else "")
                + ("\n\nThis run's process ended before it finished; its files up to the last step are intact."
                   if state == "interrupted" else ""))
        weights = store.weights_path(run_cfg)
        files = sorted(map(str, weights.glob("*"))) if weights.is_dir() else [str(weights)] if weights.is_file() else None
        return text, curves_figure(rows), previews, cfg, files, gr.Timer(active=state in ("starting", "running"))

    def ask_delete(name: str | None):
        try:
            if not name:
                raise ConfigError("pick a run to delete.")
            lab.run_dir(name)
            if lab.is_live(name):
                raise ConfigError(f"run {name} is still training; stop it first, then delete it.")
        except ConfigError as e:
            raise fail(e) from None
        return gr.Row(visible=True), f"Delete **{name}** (weights, metrics, previews) for good?"

    def confirm_delete(name: str):
        try:
            lab.delete(name)
        except ConfigError as e:
            raise fail(e) from None
        gr.Info(f"Deleted {name}.")
        return gr.Row(visible=False)

    # -------- layout
    with gr.Blocks(title="SRPO Studio") as demo:
        # deep-copied per tab; when the tab closes gradio drops it and the callback lets go of the session
        # handle (the session itself belongs to the Lab and keeps running, findable in the Runs tab)
        tab_state = gr.State(TabState(), delete_callback=TabState.release)
        gr.Markdown(f"# SRPO Studio\nDirect-Align / SRPO preference tuning · model world: `{preset}` · "
                    f"runs in `{Path(runs_dir).name}/`")  # the folder's name only: the page shows no server path
        with gr.Tabs() as tabs:
            with gr.Tab("Control words", id="words"):
                with gr.Row():
                    with gr.Column(scale=2):
                        pos_text = gr.Textbox(words_to_text(defaults["pos_words"]), label="Positive control words",
                                              info="comma-separated; training cycles through them")
                        neg_text = gr.Textbox(words_to_text(defaults["neg_words"]), label="Negative control words",
                                              info="comma-separated")
                        words_note = gr.Markdown()
                        with gr.Row():
                            words_preset = gr.Dropdown(lab.preset_names(), value=preset, label="Preset", scale=3)
                            load_btn = gr.Button("Load", scale=1)
                        with gr.Row():
                            save_name = gr.Textbox(label="Save as (user preset)", placeholder="my-words", scale=3)
                            save_btn = gr.Button("Save", scale=1)
                    with gr.Column(scale=3):
                        gr.Markdown("### Reward inspector")
                        with gr.Row():
                            insp_prompt = gr.Textbox(default_prompt, label="Prompt", scale=3)
                            insp_seed = gr.Number(0, label="Seed", precision=0, scale=1)
                            gen_btn = gr.Button("Generate", scale=1)
                        with gr.Row():
                            insp_image = gr.Image(type="filepath", format="png", label="Image (generated or uploaded)",
                                                  sources=["upload", "clipboard"], height=256, elem_classes=["pixels", "fill"])
                            with gr.Column():
                                pos_dd = gr.Dropdown(defaults["pos_words"], value=defaults["pos_words"][0] if
                                                     defaults["pos_words"] else "", label="p+ word", allow_custom_value=True)
                                neg_dd = gr.Dropdown(defaults["neg_words"], value=defaults["neg_words"][0] if
                                                     defaults["neg_words"] else "", label="p- word", allow_custom_value=True)
                        score_json = gr.JSON(label="Scores", elem_id="score-json")
                        unknown_note = gr.Markdown()
                        score_plot = gr.Plot(label="r(p), r(p+), r(p-), SRP")
                gr.Markdown("### Does the reward model perceive this word?\nEach word's effect "
                            "r(word. p) − r(p) on the inspector's image; grey bars are words its tokenizer does not know.")
                with gr.Row():
                    scan_words = gr.Textbox(SCAN_WORDS, label="Words to scan", scale=4)
                    scan_btn = gr.Button("Scan", scale=1)
                scan_plot = gr.Plot(label="Word effects")

            with gr.Tab("Tune", id="tune"):
                with gr.Row():
                    tune_preset = gr.Dropdown(lab.preset_names(), value=preset,
                                              label="Preset (the form starts from it)",
                                              allow_custom_value=True, scale=3)
                    reload_btn = gr.Button("Reset form to preset", scale=1)
                form: dict[str, gr.components.Component] = {}
                for group in dict.fromkeys(f.metadata["group"] for f in schema):
                    basic = [f for f in schema if f.metadata["group"] == group and not f.metadata["advanced"]]
                    if basic:
                        with gr.Row(equal_height=True):
                            for f in basic:
                                form[f.name] = field_component(f, defaults[f.name])
                with gr.Accordion("Advanced settings", open=False):
                    for group in dict.fromkeys(f.metadata["group"] for f in schema):
                        advanced = [f for f in schema if f.metadata["group"] == group and f.metadata["advanced"]]
                        if advanced:
                            gr.Markdown(f"**{group}**")
                            with gr.Row(equal_height=True):
                                for f in advanced:
                                    form[f.name] = field_component(f, defaults[f.name])
                with gr.Row():
                    launch_btn = gr.Button("Launch", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
                # Apart from the progress line: a late answer to Stop must not overwrite the final status.
                stop_note = gr.Markdown()
                with gr.Row():
                    steer_pos = gr.Textbox(label="Steer: positive words", placeholder="Bright, Vivid", scale=2)
                    steer_neg = gr.Textbox(label="Steer: negative words", placeholder="Dark", scale=2)
                    steer_btn = gr.Button("Apply from the next step", scale=1)
                steer_note = gr.Markdown(elem_id="steer-note")
                overrides_code = gr.Code("{}", language="json", label="Overrides of the preset sent to /train",
                                         interactive=False, max_lines=12)
                run_name = gr.Textbox(label="Run", interactive=False)
                compare_base_btn = gr.Button("Compare this run with the base model", visible=False)
                progress = gr.Markdown("Press Launch to start a session.", elem_id="tune-progress")
                tune_plot = gr.Plot(label="Curves", elem_id="tune-curves")
                tune_gallery = gr.Gallery(label="Previews", columns=8, height=180, object_fit="contain",
                                          elem_id="tune-previews", elem_classes="pixels")

            with gr.Tab("Recoveries", id="recoveries") as rec_tab:
                gr.Markdown("One clean sample, noised to each sigma; rows: noisy state, naive one-step x0, "
                            "Direct-Align recovery (one step down, then the known noise removed).")
                with gr.Row():
                    rec_prompt = gr.Textbox(default_prompt, label="Prompt", scale=3)
                    rec_seed = gr.Number(0, label="Seed", precision=0, scale=1)
                    rec_model = gr.Dropdown([("base model", BASE)], value=BASE, label="Model", allow_custom_value=True, scale=2)
                    rec_sigmas = gr.Textbox("0.1, 0.3, 0.5, 0.7, 0.9", label="Sigmas", scale=2)
                    rec_btn = gr.Button("Recover", scale=1)
                with gr.Row():
                    rec_grid = gr.Image(label="noisy / one-step / Direct-Align", format="png", height=300, elem_id="rec-grid",
                                        elem_classes=["pixels", "fill"])
                    rec_plot = gr.Plot(label="PSNR against sigma", elem_id="rec-plot")
                rec_table = gr.JSON(label="PSNR data (dB)")

            with gr.Tab("Compare", id="compare") as cmp_tab:
                with gr.Row():
                    cmp_prompt = gr.Textbox(default_prompt, label="Prompt", scale=3)
                    cmp_seed = gr.Number(0, label="Seed", precision=0, scale=1)
                    cmp_a = gr.Dropdown([("base model", BASE)], value=BASE, label="A", allow_custom_value=True, scale=2)
                    cmp_b = gr.Dropdown([("base model", BASE)], value=BASE, label="B", allow_custom_value=True, scale=2)
                    cmp_btn = gr.Button("Compare", scale=1)
                with gr.Row():
                    cmp_img_a = gr.Image(label="A", format="png", height=256, elem_classes=["pixels", "fill"], elem_id="cmp-a",
                                         interactive=False)
                    cmp_slider = gr.ImageSlider(label="A | B", type="pil", height=256, format="png",
                                                 elem_id="cmp-slider")
                    cmp_img_b = gr.Image(label="B", format="png", height=256, elem_classes=["pixels", "fill"], elem_id="cmp-b",
                                         interactive=False)
                cmp_scores = gr.JSON(label="Rewards of A and B (control words from the Control words tab); the judge on the toy world")
                gr.Markdown("### A and B over prompts x seeds")
                with gr.Row():
                    grid_prompts = gr.Textbox("\n".join(grid_default), label="Prompts (one a line)", lines=4, scale=3)
                    grid_seeds = gr.Number(2, label="Seeds per prompt", precision=0, scale=1)
                    grid_btn = gr.Button("Compare over the grid", scale=1)
                grid_img = gr.Image(label="Pairs: A | B, each with its reward and SRP", format="png", interactive=False,
                                    elem_id="cmp-grid")
                grid_table = gr.Dataframe(label="Summary (d: effect size against A)", interactive=False,
                                          elem_id="cmp-table")
                grid_files = gr.File(label="Downloads: the grid (PNG) and the table (CSV)", file_count="multiple",
                                     interactive=False, elem_id="cmp-downloads")

            with gr.Tab("Runs", id="runs") as runs_tab:
                with gr.Row():
                    runs_dd = gr.Dropdown([], label="Run", allow_custom_value=True, scale=4)
                    refresh_btn = gr.Button("Refresh", scale=1)
                run_info = gr.Markdown(elem_id="run-info")
                run_plot = gr.Plot(label="Curves")
                run_gallery = gr.Gallery(label="Previews", columns=8, height=180, object_fit="contain",
                                         elem_classes="pixels")
                with gr.Row():
                    run_config = gr.JSON(label="Resolved config (a preset: replay with --preset <run>/config.json)")
                    run_weights = gr.File(label="Tuned weights (LoRA file, or a full fine-tune's transformer/ folder)",
                                       file_count="multiple", elem_id="run-weights")
                with gr.Row():
                    run_stop_btn = gr.Button("Stop this run", variant="stop")
                    delete_btn = gr.Button("Delete this run…")
                with gr.Row(visible=False) as confirm_row:
                    confirm_text = gr.Markdown()
                    confirm_btn = gr.Button("Yes, delete it", variant="stop")
                    cancel_btn = gr.Button("Keep it")
                run_msg = gr.Markdown()
                watch = gr.Timer(1.0, active=False)

        lists = [runs_dd, rec_model, cmp_a, cmp_b]

        # -------- events: control words
        words_out = [pos_dd, neg_dd, form["pos_words"], form["neg_words"], words_note]
        for box in (pos_text, neg_text):
            # always_last: the default ("once") would drop the keystrokes typed while one is processed.
            box.input(apply_words, [pos_text, neg_text, pos_dd, neg_dd], words_out, api_visibility="private",
                      trigger_mode="always_last", **free)
        load_btn.click(load_words, [words_preset], [pos_text, neg_text], api_visibility="private", **free).success(
            apply_words, [pos_text, neg_text, pos_dd, neg_dd], words_out, api_visibility="private", **free)
        for name, box in (("pos_words", pos_text), ("neg_words", neg_text)):
            form[name].input(lambda text: text, [form[name]], [box], api_visibility="private",
                             trigger_mode="always_last", **free).then(
                apply_words, [pos_text, neg_text, pos_dd, neg_dd], words_out, api_visibility="private", **free)
        save_btn.click(save_words, [save_name, pos_text, neg_text], [words_preset, tune_preset],
                       api_visibility="private", **free)
        gen_btn.click(generate, [insp_prompt, insp_seed], [insp_image], api_name="generate", **device_queue)
        gr.on([insp_image.change, insp_prompt.change, pos_dd.change, neg_dd.change], score,
              [insp_image, insp_prompt, pos_dd, neg_dd], [score_json], api_name="score",
              trigger_mode="always_last", show_progress="minimal", **device_queue).success(
            show_score, [score_json, pos_dd, neg_dd], [score_plot, unknown_note], api_visibility="private", **free)
        scan_btn.click(scan, [insp_image, insp_prompt, scan_words], [scan_plot], api_visibility="private",
                       **device_queue)

        # -------- events: tune
        form_list = [form[f.name] for f in schema]
        for trigger in (tune_preset.change, reload_btn.click):
            trigger(fill_form, [tune_preset], form_list, api_visibility="private", **free)
        launch_btn.click(prepare, [tune_preset, tab_state, *form_list], [overrides_code], api_visibility="private",
                         **free).success(
            train, [tune_preset, overrides_code, form["steps"], tab_state], [run_name, progress, tune_plot, tune_gallery],
            api_name="train", **device_queue).then(
            after_session, [run_name], [*lists, compare_base_btn], api_visibility="private", **free)
        # a run listed everywhere (and shown in Runs) as soon as it starts; the lists renewed whenever a tab that
        # lists runs is opened
        run_name.change(refresh_lists, [run_name], lists, api_visibility="private", **free)
        for tab in (rec_tab, cmp_tab, runs_tab):
            tab.select(refresh_lists, [runs_dd], lists, api_visibility="private", **free)
        compare_base_btn.click(compare_with_base, [run_name], [tabs, cmp_a, cmp_b], api_visibility="private",
                               **free).then(
            compare, [cmp_prompt, cmp_seed, cmp_a, cmp_b, pos_dd, neg_dd], [cmp_img_a, cmp_img_b, cmp_scores],
            api_name="compare_with_base", api_visibility="private", **device_queue).then(
            slider_pair, [cmp_img_a, cmp_img_b], [cmp_slider], api_visibility="private", **free)
        # Off the queue: a click must reach the session at once, not behind queued status updates.
        stop_btn.click(stop_tab, [tab_state], [stop_note], api_visibility="private", queue=False)
        gr.api(stop_run, api_name="stop", **free)
        steer_btn.click(steer, [run_name, steer_pos, steer_neg], [steer_note], api_name="steer", **free)

        # -------- events: recoveries, compare
        rec_btn.click(recover, [rec_prompt, rec_seed, rec_model, rec_sigmas], [rec_grid, rec_plot, rec_table],
                      api_name="recover", **device_queue)
        cmp_btn.click(compare, [cmp_prompt, cmp_seed, cmp_a, cmp_b, pos_dd, neg_dd], [cmp_img_a, cmp_img_b, cmp_scores],
                      api_name="compare", **device_queue).then(
            slider_pair, [cmp_img_a, cmp_img_b], [cmp_slider], api_visibility="private", **free)

        grid_btn.click(compare_grid, [grid_prompts, grid_seeds, cmp_a, cmp_b], [grid_img, grid_table, grid_files],
                       api_name="compare_grid", **device_queue)

        # -------- events: runs
        run_view = [run_info, run_plot, run_gallery, run_config, run_weights, watch]
        refresh_btn.click(refresh_lists, [runs_dd], lists, api_visibility="private", **free)
        runs_dd.change(show_run, [runs_dd], run_view, api_visibility="private", **free)
        watch.tick(show_run, [runs_dd], run_view, api_visibility="private", show_progress="hidden", **free)
        run_stop_btn.click(stop_run, [runs_dd], [run_msg], api_visibility="private", **free)
        delete_btn.click(ask_delete, [runs_dd], [confirm_row, confirm_text], api_visibility="private", **free)
        cancel_btn.click(lambda: gr.Row(visible=False), None, [confirm_row], api_visibility="private", **free)
        confirm_btn.click(confirm_delete, [runs_dd], [confirm_row], api_visibility="private", **free).success(
            refresh_lists, [runs_dd], lists, api_visibility="private", **free)

        demo.load(refresh_lists, [runs_dd], lists, api_visibility="private", **free)
        demo.load(generate, [insp_prompt, insp_seed], [insp_image], api_visibility="private", **device_queue)
    return demo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="SRPO Studio: the Gradio app.")
    # Defaults come from the environment where flags cannot be given: a Hugging Face Space runs
    # `python app.py` with GRADIO_SERVER_NAME=0.0.0.0, and its variables can set SRPO_PRESET.
    env = os.environ.get
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 for every interface; default 127.0.0.1 or $GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--preset", default=env("SRPO_PRESET", config.DEFAULT_PRESET),
                   help=f"model world for inference and the Tune form's default ({', '.join(config.preset_names())} "
                        "or a YAML/JSON file; default $SRPO_PRESET or %(default)s)")
    p.add_argument("--runs-dir", default=env("SRPO_RUNS_DIR", "runs"), help="runs root (default: runs or $SRPO_RUNS_DIR)")
    p.add_argument("--user-presets", help="folder for saved control-word presets (default: <runs-dir>/../user_presets)")
    p.add_argument("--analytics", action="store_true", help="let Gradio send its usage analytics (off by default)")
    args = p.parse_args(argv)
    try:
        demo = build_demo(args.preset, args.runs_dir, args.user_presets)
    except ConfigError as e:
        p.exit(2, f"error: {e}\n")
    _, url, share_url = demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                                            prevent_thread_lock=True, quiet=True, **LAUNCH)
    print(f"SRPO Studio running at {url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
    demo.block_thread()


def __getattr__(name: str):
    """`app.demo`, built on first access: gradio's reload mode (`gradio app.py`, and Spaces in dev mode) looks for a
    module-level `demo`; building it lazily keeps importing this module free of models and state."""
    if name == "demo":
        return build_demo(os.environ.get("SRPO_PRESET", config.DEFAULT_PRESET), os.environ.get("SRPO_RUNS_DIR", "runs"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
