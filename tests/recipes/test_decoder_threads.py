"""The recipes' ``decoder_threads`` key reaches the DALI loader, and is refused for PyAV in one line."""

from __future__ import annotations

import pytest

from signstream.tools.cli import main as cli

pytest.importorskip("nvidia.dali")

ARGS = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "num_workers=0",
    "splits=dev",
    "writers=npy",
    "dtype=float32",
    "progress=false",
    "calibrate_bn=0",
]


def test_extraction_builds_dali_with_the_decoder_threads_key(packed, tmp_path, monkeypatch):
    from signstream.loaders import dali_stream

    threads = []
    real = dali_stream.build_pipeline
    monkeypatch.setattr(
        dali_stream, "build_pipeline", lambda *a, **kw: threads.append(kw["num_threads"]) or real(*a, **kw)
    )
    assert (
        cli(
            [
                "extract_features",
                f"shards={packed}",
                f"out={tmp_path / 'o'}",
                *ARGS,
                "backend=dali",
                "decoder_threads=2",
            ]
        )
        == 0
    )
    assert threads and set(threads) == {2}
    assert list((tmp_path / "o" / "dev").glob("*.npy"))


def test_decoder_threads_with_the_pyav_backend_is_a_one_line_error(packed, tmp_path, capsys):
    assert (
        cli(
            [
                "extract_features",
                f"shards={packed}",
                f"out={tmp_path / 'o'}",
                *ARGS,
                "backend=pyav",
                "decoder_threads=2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not take option(s) decoder_threads" in err[0]


def test_decoder_threads_zero_is_refused_when_the_config_is_parsed(packed, tmp_path, capsys):
    assert cli(["finetune_ctc", f"shards={packed}", f"out={tmp_path / 'o'}", "decoder_threads=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoder_threads" in err[0] and not (tmp_path / "o").exists()
