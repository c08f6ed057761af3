"""Smoke test of the remote-shard benchmark at its quick size."""

from __future__ import annotations

import json

import pytest

from signstream.benchmarks import remote


@pytest.mark.slow
def test_quick_remote_benchmark_reads_the_same_frames_from_every_source(tmp_path):
    result = remote.run(tmp_path, quick=True, extraction=False)
    servers = set(remote.HTTP_SERVERS)
    assert set(result["fps"]) == {"local", "s3", *servers} and all(v > 0 for v in result["fps"].values())
    assert set(result["ratio_vs_local"]) == {"s3", *servers}
    # every HTTP server, slow or without Range support, is read in a request or two per shard, not one per sample
    assert set(result["requests_per_shard"]) == servers and all(
        0 < n <= 2 for n in result["requests_per_shard"].values()
    )
    assert json.loads((tmp_path / "remote.json").read_text())["corpus"]["videos"] == 4
    assert "÷ local disk" in (tmp_path / "remote.md").read_text()
