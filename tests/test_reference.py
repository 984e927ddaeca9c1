"""srpo_core against the authors' reference recipe, number by number (docs/method.md, "Reference settings" and
"Reference figures"). The expected numbers are written out here from the reference's own index arithmetic, not
computed by srpo_core."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srpo_core import config, methods, srp
from srpo_core.events import StepMetrics
from srpo_core.models import build
from srpo_core.schedule import draw, dsigma_cells, reference_draw, train_sigmas
from srpo_core.session import Session, micro_batch

ROOT = Path(__file__).resolve().parent.parent

# HPS settings: grid entries 5..25 of a 50-step shift-3 schedule, 1,000 cells, groundtruth_ratio 0.9.
# mid: (sigma_hi, sigma_lo of the denoise branch, k_d, sigma_b, sigma_lo of the inversion branch, k_i)
REFERENCE_FIGURES = {
    5: (0.751930, 0.750858, 0.100751, 0.750000, 0.751073, 0.299710),
    100: (0.792686, 0.771236, 0.115015, 0.750000, 0.771450, 0.299710),
    500: (0.878486, 0.857036, 0.175075, 0.835586, 0.857036, 0.183884),
    900: (0.964286, 0.942836, 0.235135, 0.921386, 0.942836, 0.067768),
    995: (0.964286, 0.963213, 0.249399, 0.962141, 0.963213, 0.012613),
}
# Section 4 of the reference settings (the HPSv2.1 script; the PickScore script where it differs)
REFERENCE = {"rollout_steps": 25, "shift": 3.0, "rollout_guidance": 1.0, "train_guidance": 3.5, "sample_guidance": 3.5,
             "sample_steps": 50, "floor_timestep": True, "noise_prior": "rollout", "sigma_draw": "reference",
             "train_sigma_range": (0.75, 0.964286), "train_grid_len": 1000, "groundtruth_ratio": 0.9,
             "k_denoise": (0.1, 0.25), "k_inversion": (0.3, 0.01), "loss": "threshold", "loss_threshold": 0.7,
             "reward": "hpsv2.1", "reward_scale": 1.0, "method": "srpo", "inversion": True, "weighting": "k-schedule",
             "pos_words": ["Natural-lighting", "Detail", "Detailed", "Real"],
             "neg_words": ["Concept art", "Painting", "Anime", "Flat", "Oil"],
             "optimizer": "adamw", "lr": 5e-6, "lr_schedule": "constant", "weight_decay": 1e-4, "grad_clip": 0.1,
             "batch_size": 1, "grad_accum": 32, "resolution": 720, "finetune": "full", "steps": 20,
             "mixed_precision": "bf16", "gradient_checkpointing": True}
PICKSCORE = {**REFERENCE, "reward": "pickscore", "reward_scale": 0.05, "rollout_guidance": 2.0,
             "train_sigma_range": (0.666667, 0.964286), "k_denoise": (0.1, 0.5), "k_inversion": (0.6, 0.01)}
# What each FLUX preset knowingly does differently (README's "Reference settings" table names the same ones)
DEPARTURES = {
    "flux-dev-80gb": {"finetune", "lr"},
    "flux-dev-24gb": {"finetune", "lr", "grad_accum", "resolution", "optimizer"},
    "flux-dev-pickscore": {"finetune", "lr"},
}


def _grid():
    lo, hi = config.load("flux-dev-80gb").train_sigma_range
    return train_sigmas(lo, hi, 1000)


@pytest.mark.parametrize("mid", sorted(REFERENCE_FIGURES))
def test_the_reference_draw_places_both_branches_and_their_k(mid):
    grid, cells = _grid(), dsigma_cells(1000, 0.9)
    assert cells == 100
    d = reference_draw(torch.tensor([mid]), 1000, cells)
    hi, lo, kd, b, lo_inv, ki = REFERENCE_FIGURES[mid]
    assert float(grid[d.hi]) == pytest.approx(hi, abs=1e-5)
    assert float(grid[d.lo]) == pytest.approx(lo, abs=1e-5)
    assert float(grid[d.b]) == pytest.approx(b, abs=1e-5)
    assert float(grid[d.lo_inv]) == pytest.approx(lo_inv, abs=1e-5)
    assert float(srp.k_at((0.1, 0.25), d.k_d, 1000)) == pytest.approx(kd, abs=1e-5)
    assert float(srp.k_at((0.3, 0.01), d.k_i, 1000)) == pytest.approx(ki, abs=1e-5)


def test_the_reference_draw_covers_mid_5_to_995_and_shortens_about_a_fifth_of_the_steps():
    d = draw("reference", 200_000, 1000, 100, torch.Generator().manual_seed(0))
    mid = d.k_d
    assert int(mid.min()) == 5 and int(mid.max()) == 995
    short = float(((d.lo - d.hi) < 100).float().mean())
    assert short == pytest.approx(194 / 991, abs=0.005)  # mids 5..99 and 901..995 (~19% of draws)
    assert bool(((d.lo - d.hi) == (d.b - d.lo_inv)).all())  # both branches take the same step width


def test_the_uniform_draw_reads_each_branch_k_at_its_own_lower_noise_level():
    d = draw("uniform", 1000, 1000, 100, torch.Generator().manual_seed(0))
    assert bool((d.lo - d.hi == 100).all() and (d.b - d.lo == 100).all() and (d.lo_inv == d.lo).all())
    assert bool((d.k_d == 999 - d.lo).all() and (d.k_i == 999 - d.b).all())


@pytest.mark.parametrize("step, words", [(1, ("Detail", "Painting")), (2, ("Detailed", "Anime")), (3, ("Real", "Flat"))])
def test_control_words_follow_the_optimizer_step_counted_from_1(step, words):
    cfg = config.load("flux-dev-80gb")
    assert (srp.pick_words(cfg.pos_words, step), srp.pick_words(cfg.neg_words, step)) == words


def test_a_session_logs_the_reference_word_pairs_of_steps_1_2_3(tmp_path):
    words = ["pos_words=Natural-lighting,Detail,Detailed,Real", "neg_words=Concept art,Painting,Anime,Flat,Oil"]
    events = list(Session(config.load("tiny", ["steps=3", "preview_every=0", *words]), tmp_path))
    records = [e.record for e in events if isinstance(e, StepMetrics)]
    assert [(r.pos_word, r.neg_word) for r in records] == [("Detail", "Painting"), ("Detailed", "Anime"), ("Real", "Flat")]


def test_online_mode_injects_the_noise_its_rollout_started_from():
    cfg = config.load("tiny", ["batch_size=2"])
    models = build(cfg)
    ctx = methods.Context(models.backend, models.reward, cfg)
    mb = micro_batch(cfg, ["a red circle on sky"], __import__("random").Random(0), step=1, micro=0)
    cond = models.backend.encode_prompts(mb.prompts)
    x0, eps = methods.clean_and_noise(ctx, mb, cond)
    seed = mb.noise_gen.initial_seed()
    start = ctx.noise(2, torch.Generator().manual_seed(seed))
    assert torch.equal(eps, start)
    assert torch.equal(x0, methods.rollout(ctx, cond, start))
    fresh = methods.Context(models.backend, models.reward, cfg.replace(noise_prior="fresh"))
    mb = micro_batch(cfg, ["a red circle on sky"], __import__("random").Random(0), step=1, micro=0)
    x0_f, eps_f = methods.clean_and_noise(fresh, mb, cond)
    assert torch.equal(x0_f, x0) and not torch.equal(eps_f, eps)


def test_floored_timestep_reaches_the_transformer_and_the_step_keeps_the_exact_sigma():
    cfg = config.load("tiny", ["floor_timestep=true"])
    models = build(cfg)
    seen = []
    models.backend.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].clone()),
                                                         with_kwargs=True)
    ctx = methods.Context(models.backend, models.reward, cfg)
    cond = models.backend.encode_prompts(["a red circle on sky"])
    x = torch.randn(1, *models.backend.latent_shape(cfg.resolution))
    ctx.velocity(x, torch.tensor([0.8576]), cond, 1.0)
    assert float(seen[-1]) == pytest.approx(0.857, abs=1e-7)


def test_threshold_loss_and_its_gradient():
    cfg = config.load("tiny", ["loss=threshold", "loss_threshold=0.7"])
    r = torch.tensor([0.2, 0.5, 0.9, 0.69], requires_grad=True)
    loss = methods.branch_loss(r, cfg, 2)
    assert loss.item() == pytest.approx((0.5 + 0.2 + 0.0 + 0.01) / 4 / 2)
    loss.backward()
    assert r.grad.tolist() == pytest.approx([-1 / 8, -1 / 8, 0.0, -1 / 8])
    linear = torch.tensor([0.2, 0.9], requires_grad=True)
    methods.branch_loss(linear, config.load("tiny"), 2).backward()
    assert linear.grad.tolist() == pytest.approx([-1 / 4, -1 / 4])


def test_reward_keeps_fp32_weights_and_takes_the_pickscore_scale():
    cfg = config.load("tiny", ["weights_dtype=bf16", "reward_scale=0.05"])
    models = build(cfg)
    assert {p.dtype for p in models.reward.model.parameters()} == {torch.float32}
    assert models.reward.scale == pytest.approx(0.05 * build(config.load("tiny")).reward.scale)


@pytest.mark.parametrize("preset, reference", [("flux-dev-80gb", REFERENCE), ("flux-dev-24gb", REFERENCE),
                                               ("flux-dev-pickscore", PICKSCORE)])
def test_flux_presets_follow_the_reference_except_the_named_departures(preset, reference):
    cfg = config.load(preset).to_dict()
    differ = set()
    for key, value in reference.items():
        ours = tuple(cfg[key]) if isinstance(value, tuple) else cfg[key]
        same = ours == pytest.approx(value, abs=1e-6) if isinstance(value, (float, tuple)) else ours == value
        if not same:
            differ.add(key)
    assert differ == DEPARTURES[preset]


def test_two_processes_inject_the_same_noise(tmp_path):
    """Under `accelerate launch`, each process builds its micro-batches as the session does; the injected noise must
    be identical on both (the reference broadcasts one eps), while the sigma draws stay each process's own."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--dynamo_backend",
           "no", "--num_processes", "2", "--mixed_precision", "no", str(ROOT / "tests" / "noise_check.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # a script's own folder, tests/, is what Python puts on its path
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert result["noise_spread"] == 0.0
    assert result["prompts_differ"] and result["sigma_draws_differ"]
