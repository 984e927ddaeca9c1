"""The bench command's figures are present and consistent (speed itself is reported, never asserted)."""

import pytest

from srpo_core import bench


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
