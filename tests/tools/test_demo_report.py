"""Tests for the demo's report picture (report.png from a summary)."""

from __future__ import annotations

import pytest

from signstream.tools.demo_report import PANELS, write_report


def _summary():
    def hist(ws):
        return [{"epoch": i, "train_loss": 1.0, "dev_wer": w} for i, w in enumerate(ws)]

    return {
        "dev_wer": 20.0,
        "test_wer": 22.0,
        "baseline_dev_wer": 80.0,
        "baseline_test_wer": 82.0,
        "date": "2026-01-01",
        "curves": {
            "finetune": hist([100.0, 60.0, 30.0]),
            "head": hist([90.0, 40.0, 20.0, 21.0]),
            "head_random": hist([100.0, 90.0, 80.0, 81.0]),
        },
        "stages": [
            {"stage": "synth", "frames_per_s": None},
            {"stage": "pack", "frames_per_s": 900.0},
            {"stage": "finetune", "frames_per_s": 400.0},
        ],
    }


def test_report_is_a_png_with_the_three_panels(tmp_path):
    from matplotlib.image import imread

    path = tmp_path / "report.png"
    titles = write_report(_summary(), path)
    assert titles == list(PANELS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(path).shape[:2]
    assert width > 2 * height  # three panels side by side
    assert not list(tmp_path.glob(".*tmp*")), "the temporary file is renamed away"


def test_report_fails_without_curves_and_leaves_no_file(tmp_path):
    summary = _summary()
    del summary["curves"]
    with pytest.raises(KeyError):
        write_report(summary, tmp_path / "report.png")
    assert list(tmp_path.iterdir()) == []
