"""Too many skipped samples is an error: ``max_skipped_fraction`` separates damage from a dead decoder.

A corpus with a damaged file or two must still extract and train (the damaged
samples skipped and named); a decoder or server that delivers almost nothing
must not end as a success. One damaged video of a 3-video split (33 %) is
above the default (20 %) and refused with one line; the same run with
``max_skipped_fraction=0.5`` completes without the damaged video.
"""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from signstream import SignstreamError
from signstream.recipes import guards
from signstream.tools.cli import main as cli
from tests.hostile.test_recipes_zero_videos import EXTRACT, FINETUNE, error_line

pytestmark = pytest.mark.hostile


def damage_first_video(packed, dest, split):
    """A copy of ``packed`` whose first video member in ``split`` is zeros; returns (copy, its key)."""
    shutil.copytree(packed, dest)
    tar = sorted((dest / split).glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        member = next(m for m in t.getmembers() if m.isfile() and not m.name.endswith(".json"))
    with open(tar, "r+b") as f:
        f.seek(member.offset_data)
        f.write(bytes(member.size))
    return dest, member.name.split(".")[0]


@pytest.fixture(scope="module")
def one_bad_dev(packed, tmp_path_factory):
    return damage_first_video(packed, tmp_path_factory.mktemp("one_bad_dev") / "packed", "dev")


def test_one_damaged_sample_in_a_thousand_passes_and_a_dead_decoder_does_not():
    skips = [{"key": "01April_2010_Thursday_heute_default-1", "shard": "dev-000000.tar", "reason": "decode failed"}]
    guards.require_videos("dev", 539, skips, max_skipped_fraction=guards.MAX_SKIPPED_FRACTION)
    dead = skips * 540
    with pytest.raises(SignstreamError, match="yielded no video"):
        guards.require_videos("dev", 0, dead, max_skipped_fraction=guards.MAX_SKIPPED_FRACTION)
    # a decoder that delivers a trickle is refused too, naming the share and the way to accept it
    with pytest.raises(SignstreamError, match=r"530 of 540 samples skipped \(98%\).*raise max_skipped_fraction"):
        guards.require_videos("dev", 10, skips, max_skipped_fraction=0.2, skipped_count=530)


def test_extraction_above_the_skipped_fraction_fails_naming_the_share_and_the_sample(one_bad_dev, tmp_path, capsys):
    shards, key = one_bad_dev
    out = tmp_path / "feats"
    assert cli(["extract_features", f"shards={shards}", f"out={out}", "splits=dev", "calibrate_bn=0", *EXTRACT]) == 2
    line = error_line(capsys)
    assert "1 of 3 samples skipped (33%), more than max_skipped_fraction=0.2" in line, line
    assert key in line and "decode failed" in line
    assert not (out / "features.dev").exists() and not (out / "summary.json").exists()


def test_extraction_within_a_raised_fraction_skips_the_damaged_video_and_names_it(one_bad_dev, tmp_path):
    shards, key = one_bad_dev
    out = tmp_path / "feats"
    assert (
        cli(
            [
                "extract_features",
                f"shards={shards}",
                f"out={out}",
                "splits=dev",
                "calibrate_bn=0",
                "max_skipped_fraction=0.5",
                *EXTRACT,
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    dev = summary["splits"]["dev"] if "splits" in summary else summary["dev"]
    assert dev["videos"] == 2 and [s["key"] for s in dev["skipped"]] == [key]
    assert not (out / "dev" / f"{key}.npy").exists()


def test_finetune_scores_dev_past_one_damaged_video_only_when_allowed(one_bad_dev, tmp_path, capsys):
    shards, _ = one_bad_dev
    assert cli(["finetune_ctc", f"shards={shards}", f"out={tmp_path / 'strict'}", "num_workers=0", *FINETUNE]) == 2
    assert "more than max_skipped_fraction=0.2" in error_line(capsys)
    assert (
        cli(
            [
                "finetune_ctc",
                f"shards={shards}",
                f"out={tmp_path / 'lenient'}",
                "num_workers=0",
                "max_skipped_fraction=0.5",
                *FINETUNE,
            ]
        )
        == 0
    )
    assert (tmp_path / "lenient" / "metrics.json").exists()


def test_a_fraction_outside_zero_to_one_is_refused_before_any_work(packed, tmp_path, capsys):
    assert (
        cli(["extract_features", f"shards={packed}", f"out={tmp_path / 'f'}", "max_skipped_fraction=1.5", *EXTRACT])
        == 2
    )
    assert "max_skipped_fraction" in error_line(capsys)
    assert not (tmp_path / "f").exists()
