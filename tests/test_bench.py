"""The bench command's figures are present and consistent (speed itself is reported, never asserted)."""

import json
import subprocess
import sys

import pytest

from srpo_core import bench

from conftest import ROOT


def test_bench_reports_consistent_figures():
    result = bench.run("tiny", steps=10, warmup=1)
    assert result["steps_measured"] == 10
    for key in ("toy_step_s", "floor_step_s", "sample_images_per_s", "inspector_latency_s", "peak_rss_mb"):
        assert result[key] > 0, key
    assert result["overhead_ratio"] == pytest.approx(result["toy_step_s"] / result["floor_step_s"])
    phases = [result[f"floor_{k}_s"] for k in ("rollout", "branch_forward", "decode", "reward", "backward", "optimizer")]
    assert all(p > 0 for p in phases)
    assert sum(phases) <= result["floor_step_s"] * 1.05  # the phases are parts of the floor step
    assert bench.table(result).splitlines()[3].startswith("toy_step_s")


@pytest.mark.parametrize("name, extra", [("flux-hpsv2.1", ["quantization=int8", "free_text_encoders=true"]),
                                         ("sd3-pickscore", [])])
def test_full_size_bench_runs_on_the_fixtures(tmp_path, name, extra):
    """`bench --gpu --random-weights` on CPU with the fixtures' configurations: the command the GPU check runs on the
    full-size presets, through the same Session, so the GPU run is not its first."""
    from srpo_core import fixtures
    fx = fixtures.write_fixtures(tmp_path / "fx")
    proc = subprocess.run([sys.executable, "-m", "srpo_core", "bench", "--gpu", "--random-weights", "--preset",
                           str(fx[f"preset:{name}"]), "--set", "device=cpu", *[a for e in extra for a in ("--set", e)],
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["random_weights"] and result["device"] == "cpu" and result["steps_measured"] == 3
    assert set(result["phases"]) == {"loading", "setup", "training"}
    assert all(p["seconds"] > 0 and p["peak_rss_gb"] > 0 for p in result["phases"].values())
    assert result["memory_estimate_gb"] > 0 and result["seconds_per_step"] > 0 and result["sample_images_per_s"] > 0
    assert result["reference_run_hours"] == pytest.approx(20 * 32 * result["seconds_per_step"] / 3600)
    assert all(result[f"step_{k}_s"] > 0 for k in ("rollout", "branch_forward", "decode", "reward", "backward"))


def test_random_weights_follow_the_shipped_configurations():
    """The full-size configurations shipped in configs/models build the published parameter counts (on the meta
    device: no memory): FLUX.1-dev's 11.9B-parameter transformer, SD3.5-medium's 2.5B, PickScore's 1B CLIP H."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPModel, T5EncoderModel
    from srpo_core.fullsize import CONFIGS, _empty
    count = lambda m: sum(t.numel() for t in [*m.parameters(), *m.buffers()]) / 1e9  # noqa: E731  (SD3: pos_embed buffer)
    assert count(_empty(FluxTransformer2DModel, CONFIGS / "FLUX.1-dev" / "transformer")) == pytest.approx(11.90, abs=0.01)
    # T5-XXL's encoder is 4.76B; transformers 5 builds this config with encoder.embed_tokens untied from shared
    # (+32128 x 4096 = 0.13B), which the measurement then counts too
    assert count(_empty(T5EncoderModel, CONFIGS / "FLUX.1-dev" / "text_encoder_2")) == pytest.approx(4.76 + 0.13, abs=0.01)
    assert count(_empty(SD3Transformer2DModel, CONFIGS / "stable-diffusion-3.5-medium" / "transformer")) == \
        pytest.approx(2.47, abs=0.02)
    assert count(_empty(CLIPModel, CONFIGS / "PickScore_v1")) == pytest.approx(0.99, abs=0.01)


def test_gpu_check_dry_run_writes_one_json_of_figures(tmp_path):
    """scripts/gpu_check.sh --dry-run: the GPU check's very commands on the fixtures, on the CPU."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["gpu"] == "cpu (dry run)" and result["wall_seconds"] > 0 and len(result["presets"]) == 3
    assert all("error" not in p and p["seconds_per_step"] > 0 and p["memory_cap_gb"] for p in result["presets"])
