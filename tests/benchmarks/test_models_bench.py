"""Smoke tests of the backbone benchmark at tiny size."""

from __future__ import annotations

import json

import pytest

from signstream.benchmarks import models as bench


def test_quick_run_writes_json_and_markdown_with_a_row_per_backbone_and_case(tmp_path):
    result = bench.run(tmp_path, quick=True, threads=1)
    saved = json.loads((tmp_path / "models.json").read_text())
    assert saved["benchmark"] == "models" and saved["quick"] is True
    rows = saved["throughput"]
    assert {r["model"] for r in rows} == {"i3d", "s3d", "resnet18_2d"}
    for row in rows:
        assert "error" not in row, row
        assert row["clips_per_s"] > 0 and row["frames_per_s"] == pytest.approx(row["clips_per_s"] * 8, rel=0.01)
        # growth is measured from the RSS at the case's start: never more than the peak itself
        assert 0 < row["peak_rss_mib"] and row["peak_rss_growth_mib"] <= row["peak_rss_mib"]
        assert row["threads"] == 1
    dense = saved["dense"]["rows"]
    assert [(r["setting"], r["frames"]) for r in dense] == [
        ("default", 16),
        ("default", 96),
        ("matched chunks", 48),
        ("matched chunks", 96),
    ]
    assert all(r["out_frames"] == -(-r["frames"] // 8) for r in dense)
    md = (tmp_path / "models.md").read_text()
    assert "### Throughput" in md and "| i3d | 32 | 8 |" in md
    if not result["env"]["cuda"]:
        assert "no CUDA device" in md


def test_isolated_case_runs_in_a_subprocess_and_reports_its_row():
    case = dict(
        kind="dense",
        model="i3d",
        size=16,
        frames=24,
        setting="default",
        chunk_len=None,
        overlap=None,
        threads=1,
    )
    row = bench.run_case(case, isolate=True)
    assert "error" not in row, row
    assert row["out_frames"] == 3 and row["peak_rss_growth_mib"] > 0
