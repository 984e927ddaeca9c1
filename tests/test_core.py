"""Tiny models on CPU: sessions for every method, LoRA save/load, optimizers, events, stop, store."""

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from srpo_core import config, evaluate
from srpo_core.config import ConfigError
from srpo_core.events import Checkpoint, Failed, Finished, Started, StepMetrics
from srpo_core.session import Session
from srpo_core.store import RunStore, list_runs

PROMPT = "a red circle on sky"


def tiny(**overrides):
    return config.load("tiny", {"steps": 3, "preview_every": 2, **overrides})


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.fixture(scope="module", params=["srpo", "direct-align", "refl", "draft"])
def finished(request, tmp_path_factory):
    """A 3-step session per method, with the transformer's weights before and after."""
    cfg = tiny(method=request.param, late_steps=2)
    session = Session(cfg, tmp_path_factory.mktemp("runs"), preset="tiny")
    events = []
    before = None
    for event in session:
        if isinstance(event, Started):
            before = snapshot(session.models.backend.transformer)
        events.append(event)
    return cfg, session, events, before


def test_every_lora_parameter_changes_and_no_base_weight(finished):
    _, session, events, before = finished
    assert isinstance(events[-1], Finished), events[-1]
    after = snapshot(session.models.backend.transformer)
    lora = [n for n in after if "lora" in n]
    assert lora and len(lora) == sum(p.requires_grad for p in session.models.backend.transformer.parameters())
    for name, value in after.items():
        if "lora" in name:
            assert not torch.equal(value, before[name]), f"{name} did not train"
        else:
            assert torch.equal(value, before[name]), f"base weight {name} changed"


def test_run_directory_is_complete(finished):
    cfg, session, events, _ = finished
    store = RunStore(events[-1].run_dir)
    rows = store.metrics()
    assert [r.step for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("reward", "srp", "loss", "grad_norm", "sigma", "lr", "seconds"):
            assert math.isfinite(getattr(row, key)), (key, row)
        assert (row.pos_word, row.neg_word) == ("Bright" if row.step % 2 else "Detailed", "Dark" if row.step % 2 else "Smooth")
    assert store.config() == cfg
    assert store.status()["state"] == "finished" and store.status()["step"] == 3
    assert (store.dir / "previews" / "step_00002.png").is_file()
    card = (store.dir / "README.md").read_text()
    assert cfg.method in card and "Detailed" in card and "reward_last" in card
    keys = load_file(store.lora_path).keys()
    assert keys and all(k.startswith("transformer") and "lora" in k for k in keys)
    assert not [p for p in store.dir.rglob("*") if p.name.startswith(".")], "temp files left behind"


def test_events_arrive_in_order(finished):
    _, _, events, _ = finished
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Started", "StepMetrics", "StepMetrics", "Preview", "StepMetrics", "Checkpoint", "Finished"]
    assert [e.step for e in events if isinstance(e, StepMetrics)] == [1, 2, 3]
    assert events[0].derived["trainable_params"] > 0


def test_reload_reproduces_the_tuned_model(finished):
    cfg, session, events, _ = finished
    tuned = session.models
    fresh = evaluate.load_models(cfg, events[-1].run_dir)
    x = torch.randn(2, *fresh.backend.latent_shape(cfg.resolution), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        v_tuned = tuned.backend.velocity(x, sigma, tuned.backend.encode_prompts([PROMPT] * 2))
        v_fresh = fresh.backend.velocity(x, sigma, fresh.backend.encode_prompts([PROMPT] * 2))
        v_base = evaluate.load_models(cfg).backend.velocity(x, sigma, fresh.backend.encode_prompts([PROMPT] * 2))
    assert torch.allclose(v_tuned, v_fresh, atol=1e-6)
    assert not torch.allclose(v_tuned, v_base, atol=1e-6)


def test_same_seed_same_trajectory(tmp_path):
    runs = [Session(tiny(steps=2, preview_every=0), tmp_path) for _ in range(2)]
    rows = [[{k: v for k, v in e.record.to_dict().items() if k != "seconds"} for e in s if isinstance(e, StepMetrics)]
            for s in runs]
    assert rows[0] == rows[1]
    other = [e.record.reward for e in Session(tiny(steps=2, preview_every=0, seed=5), tmp_path) if isinstance(e, StepMetrics)]
    assert other != [r["reward"] for r in rows[0]]


def test_full_finetune_trains_every_weight_and_saves_a_loadable_transformer(tmp_path):
    from diffusers import FluxTransformer2DModel

    session = Session(tiny(finetune="full", checkpoint_every=2), tmp_path)
    events, before = [], None
    for event in session:
        if isinstance(event, Started):
            before = snapshot(session.models.backend.transformer)
        events.append(event)
    assert isinstance(events[-1], Finished), events[-1]
    transformer = session.models.backend.transformer
    assert not any("lora" in n for n, _ in transformer.named_parameters())
    assert events[0].derived["trainable_params"] == sum(p.numel() for p in transformer.parameters())
    after = snapshot(transformer)
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert len(moved) > 0.9 * len(after), f"only {len(moved)} of {len(after)} weights trained"
    store = RunStore(events[-1].run_dir)
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [2, 3]
    assert events[-2].path == store.full_dir and not store.lora_path.exists()
    assert not [p for p in store.dir.rglob("*") if p.name.startswith(".")], "temp files left behind"
    assert "every transformer weight" in (store.dir / "README.md").read_text()
    # the folder is a diffusers model: from_pretrained reads back exactly the trained weights
    reloaded = FluxTransformer2DModel.from_pretrained(store.full_dir)
    assert all(torch.equal(p, after[n]) for n, p in reloaded.named_parameters())
    # base vs tuned: load_models swaps the tuned weights into a freshly built base, which stays untouched otherwise
    cfg = session.cfg
    tuned, base = evaluate.load_models(cfg, store.dir), evaluate.load_models(cfg)
    assert all(torch.equal(p, after[n]) for n, p in tuned.backend.transformer.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in base.backend.transformer.named_parameters())
    images = [evaluate.generate(m, cfg, [PROMPT], seed=3) for m in (tuned, base)]
    assert images[0].shape == images[1].shape == (1, 3, cfg.resolution, cfg.resolution)
    assert (images[0] - images[1]).abs().max() > 1e-4


def test_memory_estimate_counts_a_full_finetune():
    """A full fine-tune's grads and AdamW states take the weights' dtype (LoRA's train in fp32); a sharded run
    divides them by the processes. A billion trained parameters, so the GB figures are not rounded away."""
    from srpo_core import memory
    from srpo_core.models import build

    models = build(tiny())
    cond, n, gb = models.backend.encode_prompts([PROMPT]), 10 ** 9, memory.GB
    bf16 = {shards: memory.estimate(models.backend, models.reward, tiny(finetune="full"), cond, n, torch.bfloat16, shards)
            for shards in (1, 2)}
    lora = memory.estimate(models.backend, models.reward, tiny(), cond, n, torch.bfloat16)
    assert bf16[1]["gradients"] == round(2 * n / gb, 2) and bf16[1]["optimizer_states"] == round(4 * n / gb, 2)
    assert bf16[2]["gradients"] == round(n / gb, 2) and bf16[2]["optimizer_states"] == round(2 * n / gb, 2)
    assert lora["lora_and_grads"] == round(8 * n / gb, 2) and lora["optimizer_states"] == round(8 * n / gb, 2)
    assert bf16[2]["total"] < bf16[1]["total"] < lora["total"]


@pytest.mark.parametrize("optimizer", ["adamw8bit", "paged-adamw8bit"])
def test_8bit_optimizers_train_lora(tmp_path, optimizer):
    session = Session(tiny(optimizer=optimizer, steps=2, preview_every=0), tmp_path)
    events = list(session)
    assert isinstance(events[-1], Finished), events[-1]
    assert type(session.optimizer).__module__.startswith("bitsandbytes")
    lora = load_file(RunStore(events[-1].run_dir).lora_path)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)


def test_stop_ends_within_one_step_and_keeps_a_valid_run(tmp_path):
    session = Session(tiny(steps=50, preview_every=0), tmp_path)
    events = []
    for event in session:
        events.append(event)
        if isinstance(event, StepMetrics) and event.step == 2:
            session.stop()
    done = events[-1]
    assert isinstance(done, Finished) and done.stopped
    assert [e.step for e in events if isinstance(e, StepMetrics)] == [1, 2]
    store = RunStore(done.run_dir)
    assert store.status()["state"] == "stopped" and store.status()["step"] == 2
    assert len(store.metrics()) == 2 and store.lora_path.is_file()
    assert isinstance(events[-2], Checkpoint)


def test_reward_goes_up_for_plain_methods_and_srp_for_srpo(tmp_path):
    """Learning, not just running: 12 steps on one prompt move the targeted reward on held-out seeds."""
    def measure(models, cfg):
        images = evaluate.generate(models, cfg, [PROMPT] * 4, 100)
        return evaluate.score(models, images, PROMPT, "Detailed", "Smooth")

    common = dict(steps=12, lr=1e-2, grad_clip=1.0, prompts=[PROMPT], preview_every=0, pos_words="Detailed", neg_words="Smooth")
    base_cfg = tiny(**common)
    base = measure(evaluate.load_models(base_cfg), base_cfg)
    results = {}
    for method in ("direct-align", "srpo"):
        cfg = tiny(method=method, **common)
        session = Session(cfg, tmp_path)
        assert isinstance(list(session)[-1], Finished)
        results[method] = measure(session.models, cfg)
    assert results["direct-align"]["reward"] > base["reward"] + 0.05
    assert results["srpo"]["srp"] > base["srp"] + 0.02
    # the relative reward does not chase the plain one: SRPO raises it less than Direct-Align does
    assert results["srpo"]["reward"] < results["direct-align"]["reward"]


def test_offline_mode_trains_from_real_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (48, 40), color).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    session = Session(tiny(images_dir=str(folder), method="direct-align", steps=2), tmp_path / "runs")
    events = list(session)
    assert isinstance(events[-1], Finished), events[-1]
    assert session.ctx.clean_bank.shape == (3, *session.models.backend.latent_shape(32))


@pytest.mark.parametrize("setup, needle", [
    ("empty_images", "holds no images"),
    ("bad_prompts", "is not UTF-8"),
    ("unwritable", "cannot be created"),
])
def test_bad_input_fails_before_a_run_directory_exists(tmp_path, setup, needle):
    runs = tmp_path / "runs"
    overrides = {}
    if setup == "empty_images":
        (tmp_path / "empty").mkdir()
        overrides["images_dir"] = str(tmp_path / "empty")
    elif setup == "bad_prompts":
        (tmp_path / "p.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
        overrides["prompts_file"] = str(tmp_path / "p.txt")
    else:  # a path under a regular file cannot be created, even by root
        (tmp_path / "a-file").write_text("x")
        runs = tmp_path / "a-file" / "runs"
    events = list(Session(tiny(**overrides), runs))
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert needle in events[0].error and events[0].run_dir is None
    assert list_runs(runs) == []


def test_metrics_survive_a_cut_line(tmp_path):
    session = Session(tiny(steps=2, preview_every=0), tmp_path)
    run_dir = list(session)[-1].run_dir
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # what a kill mid-write leaves
    assert [r.step for r in RunStore(run_dir).metrics()] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 2


def test_recover_matches_the_formula_on_the_tiny_model():
    cfg = tiny()
    table, grid = evaluate.recover(evaluate.load_models(cfg), cfg, PROMPT, 0, [0.1, 0.5, 0.9])
    assert grid.shape[0] == 3 and grid.shape[1] == 3 * 32 + 4 * 2 and grid.shape[2] == 3 * 32 + 4 * 2
    assert table["latent_gap_db"] == pytest.approx(table["predicted_gap_db"], abs=1e-3)
    assert all(d > o for d, o in zip(table["direct_align_psnr"], table["one_step_psnr"]))


def test_compiled_transformer_trains_like_the_eager_one(tmp_path):
    def rewards(**extra):
        events = list(Session(tiny(steps=2, preview_every=0, method="direct-align", **extra), tmp_path))
        assert isinstance(events[-1], Finished), events[-1]
        return [e.record.reward for e in events if isinstance(e, StepMetrics)]
    assert rewards(compile_transformer=True) == pytest.approx(rewards(), abs=1e-4)


def test_flux_without_guidance_embedding_gets_classifier_free_guidance():
    """v = v_u + g (v_c - v_u) with the empty prompt, for FLUX-family models trained without a guidance embedding."""
    backend = evaluate.load_models(tiny()).backend
    assert backend.uses_cfg and not backend.transformer.config.guidance_embeds
    x = torch.randn(2, *backend.latent_shape(32), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.4])
    cond, uncond = backend.encode_prompts([PROMPT] * 2), backend.encode_prompts([""] * 2)
    with torch.no_grad():
        v_c, v_u = backend.velocity(x, sigma, cond, 1.0), backend.velocity(x, sigma, uncond, 1.0)
        guided = backend.velocity(x, sigma, cond, 3.0)
    assert not torch.allclose(v_c, v_u, atol=1e-4)
    assert torch.allclose(guided, v_u + 3.0 * (v_c - v_u), atol=1e-5)


def test_a_diverging_run_stops_in_one_line_and_keeps_its_directory(tmp_path):
    events = list(Session(tiny(steps=6, preview_every=0, lr=1e30, grad_clip=0), tmp_path))
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.error.startswith("loss became NaN at step ")
    assert "lower lr" in failed.error and not failed.bad_input
    store = RunStore(failed.run_dir)
    rows = [json.loads(line) for line in (store.dir / "metrics.jsonl").read_text().splitlines()]  # standard JSON
    assert rows[-1]["loss"] is None and len(rows) == int(failed.error.split("step ")[1].split(";")[0])
    assert store.status()["state"] == "failed"


@pytest.mark.parametrize("damage, needle", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "is not a readable safetensors LoRA file"),
    (lambda p: p.write_bytes(b"\x80\x04K\x01."), "is not a readable safetensors LoRA file"),  # a pickle
    (lambda p: save_file({k: v * float("nan") for k, v in load_file(p).items()}, p), "holds NaN or infinite values"),
    (lambda p: save_file({k.replace("transformer_blocks", "joint_blocks"): v for k, v in load_file(p).items()}, p),
     "was made for another model"),
    (lambda p: save_file({k: v[:, :1].contiguous() if "lora_A" in k else v for k, v in load_file(p).items()}, p),
     "does not fit"),
])
def test_a_damaged_or_foreign_lora_is_refused_in_one_sentence(tmp_path, damage, needle):
    cfg = tiny(steps=1, preview_every=0)
    run_dir = list(Session(cfg, tmp_path))[-1].run_dir
    damage(run_dir / "pytorch_lora_weights.safetensors")
    with pytest.raises(ConfigError, match=needle) as err:
        evaluate.load_models(cfg, run_dir)
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)


def test_seeds_outside_64_bits_are_refused():
    with pytest.raises(ConfigError, match=r"seed must be an integer in 0\.\."):
        config.load("tiny", ["seed=1180591620717411303424"])
    with pytest.raises(ConfigError, match=r"seed must be an integer in 0\.\."):
        evaluate.generate(evaluate.load_models(tiny()), tiny(), [PROMPT], -1)


def test_steering_applies_from_the_next_step_and_replays_from_config(tmp_path):
    session = Session(tiny(steps=6, preview_every=0), tmp_path / "live")
    records = []
    for event in session:
        if isinstance(event, StepMetrics):
            records.append(event.record)
            if event.step == 2:
                assert session.steer(["Bright", "Vivid"], ["Dark"]) == 3
    words = [(r.pos_word, r.neg_word) for r in records]
    assert words[:2] == [("Bright", "Dark"), ("Detailed", "Smooth")]  # the preset's lists, round robin from step 1
    assert words[2:] == [("Vivid", "Dark"), ("Bright", "Dark"), ("Vivid", "Dark"), ("Bright", "Dark")]
    assert [r.steered for r in records] == [False, False, True, False, False, False]
    saved = RunStore(next((tmp_path / "live").iterdir())).config()
    assert saved.word_schedule == ["3:Bright|Vivid/Dark"]
    replay = [e.record for e in Session(saved, tmp_path / "replay") if isinstance(e, StepMetrics)]
    assert [r.to_dict() | {"seconds": 0} for r in replay] == [r.to_dict() | {"seconds": 0} for r in records]
    with pytest.raises(ConfigError, match="at least one positive and one negative word"):
        session.steer([], ["Dark"])
