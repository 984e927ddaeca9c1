"""Pure math: schedules, Direct-Align, SRP, and the config schema's validation."""

import math

import pytest
import torch

from srpo_core import config, direct_align as da, schedule, srp
from srpo_core.config import ConfigError

SIGMAS = [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95]


def _sample(seed=0, shape=(3, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_perfect_velocity_recovers_x0_exactly(sigma, direction):
    x0, eps = _sample()
    v = eps - x0  # the exact rectified-flow velocity
    ds = 0.02
    start, end = (sigma, sigma - ds) if direction == "down" else (sigma - ds, sigma)
    x = da.inject(x0, eps, start)
    x_end = da.euler_step(x, v, start, end)
    assert torch.allclose(x_end, da.inject(x0, eps, end), atol=1e-10)
    assert (da.recover(x_end, eps, end) - x0).abs().max() < 1e-5


def test_per_sample_sigmas_broadcast():
    x0, eps = _sample()
    sigma = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = da.inject(x0, eps, sigma)
    for i, s in enumerate(sigma.tolist()):
        assert torch.allclose(x[i], s * eps[i] + (1 - s) * x0[i])
    assert torch.allclose(da.one_step_x0(x, eps - x0, sigma), x0)


@pytest.mark.parametrize("sigma", [0.7, 0.9, 0.95])
def test_direct_align_beats_one_step_with_a_wrong_velocity_by_the_predicted_factor(sigma):
    x0, eps = _sample()
    v = eps - x0 + 0.5 * torch.randn_like(x0)  # an imperfect model
    ds = 0.02
    x = da.inject(x0, eps, sigma)
    naive_err = (da.one_step_x0(x, v, sigma) - x0).norm()
    da_err = (da.recover(da.euler_step(x, v, sigma, sigma - ds), eps, sigma - ds) - x0).norm()
    assert da_err < naive_err
    assert float(da_err / naive_err) == pytest.approx(da.predicted_error_factor(sigma, ds), rel=1e-9)


def test_euler_rollout_with_exact_velocity_lands_on_x0():
    x0, eps = _sample()
    sigmas = schedule.sampling_sigmas(7, 3.0).double()
    out = da.euler_rollout(lambda x, s: eps - x0, eps.clone(), sigmas)
    assert torch.allclose(out, x0, atol=1e-10)


def test_sampling_sigmas_endpoints_monotone_and_shift_formula():
    for shift in (1.0, 3.0, 5.0):
        s = schedule.sampling_sigmas(25, shift)
        assert s.shape == (26,)
        assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(0.0)
        assert bool((s[1:] < s[:-1]).all())
        t = torch.linspace(1, 0, 26)
        assert torch.allclose(s, shift * t / (1 + (shift - 1) * t), atol=1e-6)
    assert torch.allclose(schedule.sampling_sigmas(10, 1.0), torch.linspace(1, 0, 11), atol=1e-7)


def test_reference_training_range_and_dsigma():
    lo, hi = schedule.reference_train_range()
    assert (lo, hi) == (pytest.approx(0.75, abs=1e-6), pytest.approx(0.9643, abs=1e-4))
    grid = schedule.train_sigmas(lo, hi, 1000)
    assert grid[0] == pytest.approx(hi) and grid[-1] == pytest.approx(lo)
    assert bool((grid[1:] < grid[:-1]).all())
    cells = schedule.dsigma_cells(1000, 0.9)
    assert cells == 100
    assert float(grid[0] - grid[cells]) == pytest.approx(0.0214, abs=2e-4)
    assert schedule.sigma_to_index(grid, 0.8) == int(torch.argmin((grid - 0.8).abs()))


def test_srp_combinations_match_their_formulas():
    g = torch.Generator().manual_seed(1)
    f, tp, tpos, tneg = (torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1) for _ in range(4))
    scale = 2.5
    rel = srp.relative(f, tpos, tneg, scale)
    assert torch.allclose(rel, srp.plain(f, tpos, scale) - srp.plain(f, tneg, scale), atol=1e-6)
    assert torch.allclose(srp.cfg_like(f, tpos, tneg, 0.0, scale), rel, atol=1e-6)
    k = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = scale * torch.stack([f[i] @ ((1 + k[i]) * tpos[i] - tneg[i]) for i in range(4)])
    assert torch.allclose(srp.cfg_like(f, tpos, tneg, k, scale), expected, atol=1e-6)
    # the shared (prompt-independent) part of the text features cancels in the relative reward
    bias = torch.randn(16, generator=g)
    assert torch.allclose(srp.relative(f, tpos + bias, tneg + bias), srp.relative(f, tpos, tneg), atol=1e-6)


def test_k_tables_count_from_the_lowest_sigma_and_lambda():
    idx = torch.tensor([0, 999])  # lowest and highest sigma of a 1000-cell grid, as the reference's tables count
    kd = srp.k_at((0.1, 0.25), idx, 1000)
    ki = srp.k_at((0.3, 0.01), idx, 1000)
    assert kd.tolist() == pytest.approx([0.1, 0.25])
    assert ki.tolist() == pytest.approx([0.3, 0.01])
    lam = srp.lambda_weight(torch.tensor([0.964, 0.75]), 0.964)
    assert lam.tolist() == pytest.approx([1.0, 0.75 / 0.964])


def test_prompt_augmentation_and_round_robin():
    assert srp.augment("a red circle", "Detailed") == "Detailed. a red circle"
    assert srp.augment("a red circle", "") == "a red circle"
    assert [srp.pick_words(["a", "b", "c"], s) for s in range(1, 5)] == ["b", "c", "a", "b"]  # steps count from 1
    assert srp.pick_words([], 3) == ""


@pytest.mark.parametrize("overrides, needle", [
    ({"lr": "0"}, "lr must be greater than 0"),
    ({"lr": "-1e-4"}, "lr must be greater than 0"),
    ({"steps": "0"}, "steps must be greater than 0"),
    ({"lora_rank": "-2"}, "lora_rank must be greater than 0"),
    ({"steps": "2.5"}, "steps must be an integer"),
    ({"train_sigma_range": "0.9,0.5"}, "low < high"),
    ({"train_sigma_range": "0.0,0.5"}, "strictly between 0 and 1"),
    ({"train_sigma_range": "0.5,1.2"}, "strictly between 0 and 1"),
    ({"method": "ppo"}, "method must be one of srpo, direct-align, refl, draft"),
    ({"optimizer": "sgd"}, "optimizer must be one of adamw, adamw8bit, paged-adamw8bit"),
    ({"bogus_key": "1"}, "unknown config key 'bogus_key'; allowed keys: backend"),
    ({"prompts": ["ok", "  "]}, "empty or whitespace"),
    ({"inversion": "maybe"}, "inversion must be true or false"),
    ({"pos_words": ""}, "needs at least one positive and one negative control word"),
    ({"resolution": "100000"}, "resolution must be at most 2048"),
    ({"resolution": "40"}, "resolution must be a multiple of 16"),
    ({"batch_size": "1000"}, "batch_size must be at most 64"),
    ({"lr": "nan"}, "lr must be a finite number"),
    ({"shift": "inf"}, "shift must be a finite number"),
    ({"lora_alpha": "1e400"}, "lora_alpha must be a finite number"),
    ({"sigma_draw": "random"}, "sigma_draw must be one of reference, uniform"),
    ({"sigma_draw": "reference", "train_grid_len": "10"}, "sigma_draw reference needs train_grid_len of at least 11"),
])
def test_config_refuses_bad_values_with_a_sentence(overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        config.load("tiny", overrides)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_config_layers_defaults_preset_and_overrides(tmp_path):
    cfg = config.load("tiny", ["steps=7", "train_sigma_range=0.5,0.9", "pos_words=Bright,Vivid"])
    assert cfg.steps == 7 and cfg.backend == "tiny"
    assert cfg.train_sigma_range == (0.5, 0.9)
    assert cfg.pos_words == ["Bright", "Vivid"]
    assert cfg.lr == pytest.approx(1e-3)  # from presets/tiny.yaml, over the schema default
    assert cfg.dsigma == pytest.approx(0.4 * 100 / 999)
    # a saved resolved config is itself a preset and replays identically
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(cfg.to_dict()))
    assert config.load(str(path)) == cfg
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available: .*tiny"):
        config.load("nope")
    with pytest.raises(ConfigError, match="must look like key=value"):
        config.load("tiny", ["steps"])


def test_predicted_gap_at_reference_point():
    # a first feasibility run's reference point: sigma 0.9, dsigma 0.02 -> factor 0.185, i.e. +14.6 dB
    f = da.predicted_error_factor(0.9, 0.02)
    assert f == pytest.approx(0.1852, abs=1e-3)
    assert -20 * math.log10(f) == pytest.approx(14.6, abs=0.05)
