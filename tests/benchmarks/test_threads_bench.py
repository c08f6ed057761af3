"""Smoke test of the thread-policy benchmark at its quick size."""

from __future__ import annotations

import pytest

from signstream.benchmarks import threads


@pytest.mark.slow
def test_quick_threads_benchmark_measures_both_settings_beside_a_competitor(tmp_path):
    result = threads.run(tmp_path, quick=True)
    assert result["fps_before"] > 0 and result["fps_after"] > 0 and result["speedup"] > 0
    assert "set by OMP_NUM_THREADS" in result["log_before"] and "policy:" in result["log_after"]
    assert "after ÷ before (same loader)" in (tmp_path / "threads.md").read_text()
