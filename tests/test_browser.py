"""The app in headless Chromium (Debian's /usr/bin/chromium through Playwright): every tab, the live
inspector, a streamed session, Stop, Compare, Runs. Screenshots and timings go to test-artifacts/."""

import io
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from srpo_core import config, evaluate
from srpo_core.data import training_prompts
from srpo_core.store import from_pil, to_pil

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

PROMPT = "a red circle on sky"
PRESET = "toy-srpo"  # the app's default: the trained toy world
TIMINGS: dict[str, float] = {}
EXPECTED: dict[tuple[str, str], dict] = {}
RUNS: list[Path] = []  # the module's runs folder, for asserting what the page did on disk


@pytest.fixture(scope="module")
def page(tmp_path_factory, launch_app):
    ARTIFACTS.mkdir(exist_ok=True)
    runs = tmp_path_factory.mktemp("browser") / "runs"
    RUNS.append(runs)
    EXPECTED.update({pair: library_scores(*pair) for pair in
                     [("Detailed", "Smooth"), ("Bright", "Smooth"), ("Bright", "Dark"), ("Qwerty", "Dark")]})
    t0 = time.perf_counter()
    demo, url = launch_app(runs, PRESET)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(60_000)
        tab.goto(url)
        expect(tab.get_by_role("tab", name="Control words")).to_be_visible()
        TIMINGS["build_launch_to_page_load_s"] = round(time.perf_counter() - t0, 2)
        yield tab
        browser.close()
    demo.close()
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2))


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


def scores(page) -> dict:
    """The inspector's JSON panel, read back (its text interleaves line numbers and fold marks)."""
    text = re.sub(r"\s+", "", page.locator("#score-json").inner_text())
    out = {k: float(m.group(1)) for k in ("reward", "reward_pos", "reward_neg", "srp")
           if (m := re.search(f'"{k}":(-?[0-9.]+(?:e[-+]?[0-9]+)?)', text))}
    if words := re.search(r'"unknown_words":\[(.*?)\]', text):
        out["unknown_words"] = re.findall(r'"([^"]*)"', words.group(1))
    return out


def library_scores(pos: str, neg: str) -> dict:
    """What the inspector must show: the library's score of the page's first image (PNG round trip), which is
    drawn from the preset's first training prompt."""
    cfg = config.load(PRESET)
    prompt = training_prompts(cfg)[0]
    models = evaluate.load_models(cfg)
    image = to_pil(evaluate.generate(models, cfg, [prompt], 0)[0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tensor = from_pil(Image.open(buffer), cfg.resolution).unsqueeze(0)
    return evaluate.score(models, tensor, prompt, pos, neg)


def wait_scores(page, want: dict, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        got = scores(page)
        if set(got) == set(want) and all(got[k] == pytest.approx(want[k], abs=1e-6) for k in got):
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise AssertionError(f"the inspector shows {scores(page)}, expected {want}")


def pick(page, label: str, option: str) -> None:
    page.get_by_label(label).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_inspector_follows_the_control_words(page):
    open_tab(page, "Control words")
    wait_scores(page, EXPECTED["Detailed", "Smooth"])
    box = page.get_by_label("Positive control words")
    box.select_text()
    box.press_sequentially("Bright")
    wait_scores(page, EXPECTED["Bright", "Smooth"])
    expect(page.get_by_label("p+ word")).to_have_value("Bright")
    negative = page.get_by_label("Negative control words")
    negative.select_text()
    negative.press_sequentially("Smooth, Dark")
    t0 = time.perf_counter()
    pick(page, "p- word", "Dark")
    wait_scores(page, EXPECTED["Bright", "Dark"])
    TIMINGS["inspector_latency_s"] = round(time.perf_counter() - t0, 3)
    box.select_text()
    box.press_sequentially("Bright, , Bright, Qwerty")
    expect(page.get_by_text("1 duplicate(s) and 1 empty entry")).to_be_visible()
    pick(page, "p+ word", "Qwerty")
    wait_scores(page, EXPECTED["Qwerty", "Dark"])
    expect(page.get_by_text("The reward model does not know")).to_be_visible()
    page.get_by_role("button", name="Scan").click()
    expect(page.get_by_text("Realistic (unknown)")).to_be_visible()
    shot(page, "1-control-words")
    name = page.get_by_label("Save as (user preset)")
    name.fill("tiny")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("is a shipped preset and is never overwritten")).to_be_visible()
    name.fill("mine")
    page.get_by_role("button", name="Save").click()
    saved = RUNS[0].parent / "user_presets" / "mine.yaml"
    expect(page.get_by_text("Saved control words as mine")).to_be_visible()
    assert yaml.safe_load(saved.read_text()) == {"pos_words": ["Bright", "Qwerty"], "neg_words": ["Smooth", "Dark"]}


def test_five_step_session_streams_curves_and_a_preview(page):
    open_tab(page, "Tune")
    page.get_by_label("lr", exact=True).fill("-1")
    page.get_by_role("button", name="Launch").click()
    expect(page.get_by_text("lr must be greater than 0")).to_be_visible()
    page.get_by_label("lr", exact=True).fill("0.001")
    page.get_by_label("steps", exact=True).fill("5")
    t0 = time.perf_counter()
    page.get_by_role("button", name="Launch").click()
    expect(page.locator("#tune-progress")).to_contain_text("finished after 5 steps", timeout=120_000)
    TIMINGS["five_step_session_s"] = round(time.perf_counter() - t0, 2)
    expect(page.locator("#tune-curves .js-plotly-plot")).to_be_visible()
    assert page.locator("#tune-curves .scatterlayer .trace").count() >= 6
    expect(page.locator("#tune-previews img").first).to_be_visible()
    shot(page, "2-tune-finished")

    # the new run is offered in Compare with no refresh, and Tune compares it with the base model in one click
    run = page.get_by_label("Run", exact=True).first.input_value()
    page.get_by_role("button", name="Compare this run with the base model").click()
    expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#cmp-b img")).to_be_visible(timeout=60_000)
    assert run in page.get_by_label("B", exact=True).input_value()
    page.get_by_label("A", exact=True).click()
    expect(page.get_by_role("option", name=re.compile(re.escape(run)))).to_be_visible()
    page.keyboard.press("Escape")
    open_tab(page, "Tune")

    page.get_by_label("steps", exact=True).fill("20")
    t0 = time.perf_counter()
    page.get_by_role("button", name="Launch").click()
    expect(page.locator("#tune-progress")).to_contain_text("finished after 20 steps", timeout=120_000)
    TIMINGS["twenty_step_session_s"] = round(time.perf_counter() - t0, 2)


def test_stop_ends_a_session_and_keeps_the_run(page):
    open_tab(page, "Tune")
    page.get_by_label("steps", exact=True).fill("500")
    page.get_by_role("button", name="Launch").click()
    expect(page.locator("#tune-progress")).to_contain_text(re.compile(r"step \d+/500"), timeout=60_000)
    clicked_at = int(re.search(r"step (\d+)/500", page.locator("#tune-progress").inner_text()).group(1))
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#tune-progress")).to_contain_text("stopped after", timeout=60_000)
    TIMINGS["stop_clicked_at_step"] = clicked_at
    run = page.get_by_label("Run", exact=True).first.input_value()
    status = json.loads((RUNS[0] / run / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] < 500
    TIMINGS["stopped_at_step"] = status["step"]
    assert len((RUNS[0] / run / "metrics.jsonl").read_text().splitlines()) == status["step"]
    shot(page, "3-tune-stopped")
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#run-info")).to_contain_text("stopped")
    expect(page.locator("#run-weights a").first).to_have_attribute("href", re.compile("pytorch_lora_weights"))
    shot(page, "4-runs")


def test_recoveries_tab(page):
    open_tab(page, "Recoveries")
    prompt = page.get_by_label("Prompt", exact=True).filter(visible=True)
    prompt.fill("")
    page.get_by_role("button", name="Recover").click()
    expect(page.get_by_text("prompt is empty")).to_be_visible()
    prompt.fill(PROMPT)
    page.get_by_role("button", name="Recover").click()
    expect(page.get_by_text("direct_align_psnr")).to_be_visible()
    expect(page.locator("#rec-grid img")).to_be_visible()
    expect(page.locator("#rec-plot .js-plotly-plot")).to_be_visible()
    assert page.locator("#rec-plot .scatterlayer .trace").count() == 2
    shot(page, "5-recoveries")


def test_compare_base_with_the_latest_run(page):
    open_tab(page, "Compare")
    dropdown = page.get_by_label("B", exact=True)
    dropdown.click()
    page.get_by_role("option").nth(1).click()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#cmp-a img")).to_be_visible()
    expect(page.locator("#cmp-b img")).to_be_visible()
    expect(page.locator("#cmp-slider img").first).to_be_visible()
    assert page.locator("#cmp-a img").get_attribute("src") != page.locator("#cmp-b img").get_attribute("src")
    t0 = time.perf_counter()
    page.get_by_role("button", name="Compare over the grid").click()  # 4 held-out prompts x 2 seeds: 8 pairs
    expect(page.locator("#cmp-grid img")).to_be_visible(timeout=120_000)
    TIMINGS["compare_grid_8_pairs_s"] = round(time.perf_counter() - t0, 2)
    expect(page.locator("#cmp-table")).to_contain_text("base")
    expect(page.locator("#cmp-downloads")).to_contain_text(re.compile(r"compare_grid\s*\.png.*compare_table\s*\.csv"))
    shot(page, "6-compare")


def test_a_refreshed_page_finds_watches_and_stops_a_running_session(page):
    open_tab(page, "Tune")
    page.get_by_label("steps", exact=True).fill("500")
    page.get_by_role("button", name="Launch").click()
    expect(page.locator("#tune-progress")).to_contain_text(re.compile(r"step \d+/500"), timeout=60_000)
    page.reload()
    open_tab(page, "Runs")
    info = page.locator("#run-info")
    expect(info).to_contain_text("running")
    seen = re.search(r"step (\d+)/500", info.inner_text()).group(0)
    expect(info).not_to_contain_text(seen)  # the page polls the run's files while it trains
    page.get_by_role("button", name="Delete this run…").click()
    expect(page.get_by_text("still training; stop it first")).to_be_visible()
    shot(page, "7-runs-watching")
    page.get_by_role("button", name="Stop this run").click()
    expect(info).to_contain_text("stopped", timeout=30_000)


def test_delete_asks_for_confirmation(page):
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#run-info")).to_contain_text("step")
    run = page.locator("#run-info strong").first.inner_text()
    page.get_by_role("button", name="Delete this run…").click()
    expect(page.get_by_text("for good?")).to_be_visible()
    shot(page, "8-delete-confirm")
    page.get_by_role("button", name="Yes, delete it").click()
    expect(page.get_by_text(f"Deleted {run}")).to_be_visible()
    expect(page.locator("#run-info strong").first).not_to_have_text(run)
    assert not (RUNS[0] / run).exists()
