"""Smoke test of the remote-shard benchmark at its quick size."""

from __future__ import annotations

import json

import pytest

from signstream.benchmarks import remote


@pytest.mark.slow
def test_quick_remote_benchmark_reads_the_same_frames_from_every_source(tmp_path):
    result = remote.run(tmp_path, quick=True, extraction=False)
    assert set(result["fps"]) == {"local", "http", "s3"} and all(v > 0 for v in result["fps"].values())
    assert set(result["ratio_vs_local"]) == {"http", "s3"}
    assert json.loads((tmp_path / "remote.json").read_text())["corpus"]["videos"] == 4
    assert "÷ local disk" in (tmp_path / "remote.md").read_text()
