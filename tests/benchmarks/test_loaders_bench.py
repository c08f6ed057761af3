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

    runs = [
        {"name": "pyav", "fps": 900.0, "cpu_ms_per_frame": 0.5, "load_avg_1min": 3.0, "peak_pss_mib": 1200},
        {"name": "pyav", "fps": 1100.0, "cpu_ms_per_frame": 0.45, "load_avg_1min": 0.4, "peak_pss_mib": 1100},
    ]
    row = best_of_rounds(runs)
    assert row["fps"] == 1100.0 and row["cpu_ms_per_frame"] == 0.45
    assert [r["load_avg_1min"] for r in row["rounds"]] == [3.0, 0.4]
    assert row["peak_pss_mib"] == 1200  # memory is a ceiling: the worst round counts


def test_stage_ratio_is_pngdir_stage_sum_over_each_backends_leaving_out_comparison_rows():
    from signstream.benchmarks.loaders import stage_ratios, stage_sums

    profile = {
        "pngdir": {"decode": 0.9, "resize": 0.1},
        "pyav": {"decode": 0.1, "resize": 0.15},
        "dali-cpu": {"decode": 0.4, "resize": 0.1, "DALI fn.resize instead of OpenCV": 0.8},
    }
    assert stage_sums(profile)["dali-cpu"] == pytest.approx(0.5)
    assert stage_ratios(profile) == pytest.approx({"pyav": 4.0, "dali-cpu": 2.0})
    assert stage_ratios({"pyav": {"decode": 0.1}}) == {}  # no baseline profiled: no ratio


def test_tree_cpu_seconds_counts_a_child_process_that_has_ended():
    import subprocess
    import sys

    from signstream.benchmarks.loaders import tree_cpu_seconds

    before = tree_cpu_seconds()
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"],
        check=True,
    )
    assert tree_cpu_seconds() - before >= 0.35


def test_the_profile_times_the_backends_own_functions_and_puts_them_back(tmp_path, monkeypatch):
    import time

    from signstream.benchmarks.loaders import make_inputs, profile_stages
    from signstream.loaders import dali_opencv, dali_pipeline, pngdir, pyav_backend

    inputs = make_inputs(tmp_path, quick=True, videos=2)
    calls = {"decode_clip": 0, "png_decode": 0, "build_pipeline": 0, "post_sample": 0}

    def counted(name, fn, pause=0.0):
        def call(*args, **kwargs):
            calls[name] += 1
            time.sleep(pause)
            return fn(*args, **kwargs)

        return call

    pause = 0.05  # a slower decode_clip must show up as a slower pyav decode stage
    monkeypatch.setattr(pyav_backend, "decode_clip", counted("decode_clip", pyav_backend.decode_clip, pause))
    monkeypatch.setattr(pngdir.PngDirStream, "decode", counted("png_decode", pngdir.PngDirStream.decode))
    monkeypatch.setattr(dali_pipeline, "build_pipeline", counted("build_pipeline", dali_pipeline.build_pipeline))
    monkeypatch.setattr(
        dali_opencv.OpenCVPost, "post_sample", counted("post_sample", dali_opencv.OpenCVPost.post_sample)
    )
    originals = (pyav_backend.yuv_crop_resize, pyav_backend.emit_frame, pngdir.crop_resize, dali_opencv.resize_frame)

    profile = profile_stages(inputs, videos=2)

    # through the backends' own code: the loaders' streams run a warm-up epoch and a timed one
    # (2 videos each); DALI builds its two graphs once and warms up on the first video
    assert calls == {"decode_clip": 4, "png_decode": 4, "build_pipeline": 2, "post_sample": 3}
    assert profile["pyav"]["decode"] * inputs["frames"] >= 1000 * pause * 2
    assert all(v > 0 for stages in profile.values() for k, v in stages.items() if "instead" not in k)
    assert {"crop + resize", "to channels-first", "normalise"} <= set.intersection(*map(set, profile.values()))
    assert (
        pyav_backend.yuv_crop_resize,
        pyav_backend.emit_frame,
        pngdir.crop_resize,
        dali_opencv.resize_frame,
    ) == originals  # the timers are gone
