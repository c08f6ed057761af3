"""Smoke tests of the packing and pipeline benchmarks at their quick sizes."""

from __future__ import annotations

import json

import pytest

from signstream.benchmarks import pack, pipeline


def test_quick_pack_benchmark_reports_ratios_and_identical_outputs(tmp_path):
    result = pack.run(tmp_path, quick=True)
    assert 0 < result["size_ratio"] < 1 and result["mean_psnr_db"] > 30
    assert result["pack_fps_1worker"] > 0 and result["speedup_2_vs_1_workers"] > 0
    assert result["identical_output_1_vs_2_workers"] is True
    assert json.loads((tmp_path / "pack.json").read_text())["corpus"]["videos"] == 12
    assert "shard bytes ÷ PNG bytes" in (tmp_path / "pack.md").read_text()


@pytest.mark.slow
def test_quick_pipeline_benchmark_measures_extraction_and_finetune_ratios(tmp_path):
    result = pipeline.run(tmp_path, quick=True)
    assert result["extract_frames"] > 0 and 0 < result["extract_ratio"] < 10
    assert result["finetune_step_s_e2e"] > 0 and result["finetune_step_s_cached"] > 0
    assert "end-to-end ÷ backbone only" in (tmp_path / "pipeline.md").read_text()
