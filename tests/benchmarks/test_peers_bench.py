"""The loader benchmark's peer rows: each installed peer delivers every frame close to signstream's pixels,
and a missing one is a skipped row with its reason."""

from __future__ import annotations

import sys

import pytest

# Peers decode with FFmpeg's colour conversion and scalers, signstream with its own: ~1-2 grey levels apart
# on average. A wrong crop, channel order or normalisation is tens of levels off.
MAX_MEAN_ABS_DIFF_GREY = 3.0


@pytest.fixture(scope="module")
def peer_inputs(tmp_path_factory):
    from signstream.benchmarks import peers
    from signstream.benchmarks.loaders import _transform, make_inputs

    work = tmp_path_factory.mktemp("peers")
    inputs = make_inputs(work, quick=True, videos=2)
    return inputs, peers.prepare(inputs, work, _transform())


@pytest.mark.slow
@pytest.mark.parametrize(
    "peer",
    [
        "torchcodec → torchvision v2",
        "torchcodec, decoder-side resize + crop",
        "decord → torchvision v2",
        "SPDL filter graph",
        "webdataset.WebDataset + torchcodec",
    ],
)
def test_an_installed_peer_delivers_every_frame_within_the_pixel_bound(peer, peer_inputs):
    from signstream.benchmarks import peers

    # no importorskip: importing decord here would break OpenCV's PNG reading for the tests after this one
    reason = peers.missing(peer)
    if reason:
        pytest.skip(reason)
    inputs, prepared = peer_inputs
    cases, _ = peers.plan_peers(inputs, prepared, {"batch_size": 2, "workers": 1, "repeats": 1}, 224)
    result = peers.run_peer(next(c for c in cases if c["peer"] == peer))
    if "skip" in result:  # installed but not loadable here (FFmpeg's shared libraries missing)
        pytest.skip(result["skip"])
    assert result["frames"] == inputs["frames"] and result["fps"] > 0 and result["cpu_ms_per_frame"] > 0
    assert result["shape_mismatches"] == [] and result["diff_clips"] == 2  # every clip of the split compared
    assert 0 < result["mean_abs_diff_grey"] < MAX_MEAN_ABS_DIFF_GREY
    assert result["versions"] and result["bytes_per_frame"] > 0


def test_a_missing_peer_package_is_a_skipped_row_with_its_reason(peer_inputs, monkeypatch):
    from signstream.benchmarks import peers

    monkeypatch.setitem(sys.modules, "decord", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "spdl", None)
    inputs, prepared = peer_inputs
    cases, skipped = peers.plan_peers(inputs, prepared, {"batch_size": 2, "workers": 1, "repeats": 1}, 224)
    assert not {"decord → torchvision v2", "SPDL filter graph"} & {c["peer"] for c in cases}
    assert "peer decord → torchvision v2: skipped, decord not installed (pip install 'signstream[peers]')" in skipped
    assert any(s.startswith("peer SPDL filter graph: skipped, spdl not installed") for s in skipped)


def test_a_peer_that_fails_to_load_in_its_process_reports_why_instead_of_crashing(monkeypatch):
    from signstream.benchmarks import peers

    monkeypatch.setitem(sys.modules, "decord", None)
    result = peers.peer_case({"peer": "decord → torchvision v2"})
    assert result["skip"].startswith("peer decord → torchvision v2: skipped, ModuleNotFoundError")


def test_settle_moves_run_time_skips_to_the_reasons_and_adds_ratios_measured_in_the_same_run():
    from signstream.benchmarks import peers

    rows = [
        {"name": "pngdir", "kind": "loader", "fps": 100.0, "cpu_ms_per_frame": 2.0, "peak_pss_mib": 1},
        {"name": "pyav vp9", "kind": "loader", "fps": 400.0, "cpu_ms_per_frame": 0.5, "peak_pss_mib": 1},
        {"name": "dali-cpu vp9", "kind": "loader", "fps": 300.0, "cpu_ms_per_frame": 0.7, "peak_pss_mib": 1},
        {"name": "SPDL filter graph", "kind": "peer", "skip": "peer SPDL: skipped, OSError: no libavcodec"},
        {
            "name": "decord → torchvision v2",
            "kind": "peer",
            "fps": 200.0,
            "cpu_ms_per_frame": 1.0,
            "peak_pss_mib": 1,
            "mean_abs_diff_grey": 1.5,
            "diff_clips": 4,
            "files": "/tmp/x",
            "reference": "/tmp/x.pt",
            "shards": 1,
            "workers": 2,
            "versions": {"decord": "0.6.0"},
        },
    ]
    skipped: list[str] = []
    kept = peers.settle(rows, skipped)
    assert skipped == ["peer SPDL: skipped, OSError: no libavcodec"]
    peer = kept[-1]
    assert [r["name"] for r in kept] == ["pngdir", "pyav vp9", "dali-cpu vp9", "decord → torchvision v2"]
    assert peer["vs_pngdir"] == 2.0 and peer["vs_signstream"] == 0.5 and peer["cpu_vs_pngdir"] == 2.0
    assert "files" not in peer and "reference" not in peer  # temporary paths stay out of the report
    lines = "\n".join(peers.markdown_lines({"rows": kept}))
    assert "| decord → torchvision v2 | 200 | 2.00× | 0.50× | 1.000 | 1.50 | 1 | decord 0.6.0 |" in lines
    assert "| signstream pyav vp9 | 400 | 4.00× | 1.00× | 0.500 | 0.00 |" in lines
    assert "on the first 4 clips" in lines
    assert "1 worker(s) had nothing to do" not in lines  # not a WebDataset row
    assert peers.markdown_lines({"rows": kept[:3]}) == []  # no peer ran: no table
