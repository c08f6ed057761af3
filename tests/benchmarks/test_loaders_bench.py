"""Smoke run of the loader benchmark (quick mode: 4 short videos, in-process)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
def test_quick_loader_benchmark_writes_its_report(tmp_path):
    from signstream.benchmarks.loaders import run

    result = run(tmp_path, quick=True)
    saved = json.loads((tmp_path / "loaders.json").read_text())
    assert saved["summary"] == pytest.approx(result["summary"])
    loaders = {r["name"]: r for r in saved["rows"] if r["kind"] == "loader"}
    bare = {r["name"]: r for r in saved["rows"] if r["kind"] == "bare"}
    assert {"pngdir", "pyav vp9", "dali-cpu vp9"} <= loaders.keys()
    assert {"bare pngdir", "bare pyav vp9", "bare dali-cpu vp9"} <= bare.keys()
    frames = saved["corpus"]["frames"]
    for row in loaders.values():
        # every loader delivered every frame of the split, as 224x224 float (checked inside the case)
        assert row["frames"] == frames and row["fps"] > 0 and row["peak_pss_mib"] > 0
        assert row["vs_pngdir"] == pytest.approx(row["fps"] / loaders["pngdir"]["fps"])
        assert row["vs_bare"] == pytest.approx(row["fps"] / row["bare_fps"])
        assert row["cpu_ms_per_frame"] > 0 and len(row["rounds"]) == 1
        assert row["cpu_vs_pngdir"] == pytest.approx(loaders["pngdir"]["cpu_ms_per_frame"] / row["cpu_ms_per_frame"])
    assert loaders["pyav vp9"]["bytes_per_frame"] < loaders["pngdir"]["bytes_per_frame"] / 10
    assert all(r["frames"] == frames for r in bare.values())
    markdown = (tmp_path / "loaders.md").read_text()
    assert "CPU ms/frame" in markdown and "÷ pngdir" in markdown and "dali-cpu loader ÷ bare DALI decode" in markdown
    assert {"pngdir", "pyav", "dali-cpu"} == set(saved["profile_ms_per_frame"])
    assert all(v > 0 for stages in saved["profile_ms_per_frame"].values() for v in stages.values())
    assert "ms per frame by stage" in markdown
    assert set(saved["stage_ratios"]) == {"pyav", "dali-cpu"} and "stages only" in markdown
    assert (tmp_path / "loaders.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not torch.cuda.is_available():
        assert any("no CUDA" in m for m in saved["skipped"]) and "no CUDA" in markdown


def test_best_of_rounds_keeps_the_fastest_round_every_rounds_figures_and_the_highest_memory():
    from signstream.benchmarks.loaders import best_of_rounds

    runs = [{"name": "pyav", "fps": 900.0, "cpu_ms_per_frame": 0.5, "load_avg_1min": 3.0, "peak_pss_mib": 1200},
            {"name": "pyav", "fps": 1100.0, "cpu_ms_per_frame": 0.45, "load_avg_1min": 0.4, "peak_pss_mib": 1100}]
    row = best_of_rounds(runs)
    assert row["fps"] == 1100.0 and row["cpu_ms_per_frame"] == 0.45
    assert [r["load_avg_1min"] for r in row["rounds"]] == [3.0, 0.4]
    assert row["peak_pss_mib"] == 1200  # memory is a ceiling: the worst round counts


def test_stage_ratio_is_pngdir_stage_sum_over_each_backends_leaving_out_comparison_rows():
    from signstream.benchmarks.loaders import stage_ratios, stage_sums

    profile = {"pngdir": {"decode": 0.9, "resize": 0.1},
               "pyav": {"decode": 0.1, "resize": 0.15},
               "dali-cpu": {"decode": 0.4, "resize": 0.1, "DALI fn.resize instead of OpenCV": 0.8}}
    assert stage_sums(profile)["dali-cpu"] == pytest.approx(0.5)
    assert stage_ratios(profile) == pytest.approx({"pyav": 4.0, "dali-cpu": 2.0})
    assert stage_ratios({"pyav": {"decode": 0.1}}) == {}  # no baseline profiled: no ratio


def test_tree_cpu_seconds_counts_a_child_process_that_has_ended():
    import subprocess
    import sys

    from signstream.benchmarks.loaders import tree_cpu_seconds

    before = tree_cpu_seconds()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.4: pass"], check=True)
    assert tree_cpu_seconds() - before >= 0.35
