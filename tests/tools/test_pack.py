"""Tests for ``signstream pack``: round trip, DALI readability, determinism,
resume after a kill, and every bad-input case the packer must survive."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import webdataset as wds

from signstream import SignstreamError
from signstream.loaders.corpora import phoenix2014
from signstream.loaders.format import index_text, scan_tar
from signstream.tools.cli import main as cli
from signstream.tools.pack import STATE_FILE, pack_corpus


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _tree_bytes(out: Path) -> dict[str, bytes]:
    keep = (".tar", ".idx", ".json", ".txt")
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in keep and p.name != "pack-stats.json"
    }


def _source_frames(root: Path) -> dict[str, np.ndarray]:
    rows = phoenix2014(root)
    return {r.name: np.stack([cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in r.frames]) for r in rows}


@pytest.fixture(scope="module")
def full_size_root(tmp_path_factory):
    """Two dev videos at the real 210×260 frame size (PSNR depends on the size)."""
    from signstream.tools.synth import make_corpus

    return make_corpus(
        tmp_path_factory.mktemp("full"), seed=5, train=1, dev=2, test=1, vocab=6, max_glosses=3, workers=1
    )


@pytest.mark.parametrize("codec", ["vp9", "h264", "mjpeg"])
def test_round_trip_through_webdataset_matches_source_pngs(full_size_root, tmp_path, codec):
    pack_corpus("phoenix2014", tmp_path, root=full_size_root, workers=1, progress=False, codec=codec, splits=["dev"])
    source = _source_frames(full_size_root)
    manifest = json.loads((tmp_path / "dev" / "manifest.json").read_text())
    urls = [str(tmp_path / "dev" / s["file"]) for s in manifest["shards"]]
    psnrs, seen = [], 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        video = _decode(sample[manifest["video_ext"]])
        src = source[meta["name"]]
        assert video.shape == src.shape == (meta["num_frames"], meta["height"], meta["width"], 3)
        psnrs += [_psnr(a, b) for a, b in zip(video, src)]
        seen += 1
    assert seen == manifest["totals"]["samples"] == 2
    assert np.mean(psnrs) >= 35.0, f"{codec} mean PSNR {np.mean(psnrs):.1f} dB"


def test_dali_webdataset_reader_reads_every_sample_with_written_indexes(packed):
    from nvidia.dali import fn, pipeline_def

    manifest = json.loads((packed / "train" / "manifest.json").read_text())
    tars = [str(packed / "train" / s["file"]) for s in manifest["shards"]]
    idxs = [str(packed / "train" / s["index"]) for s in manifest["shards"]]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        video, meta = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["webm;mp4;mkv", "json"], name="reader")
        return fn.decoders.video(video, device="cpu"), meta

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == manifest["totals"]["samples"]
    keys = []
    for _ in range(manifest["totals"]["samples"]):
        video, meta = p.run()
        info = json.loads(bytes(meta.at(0)))
        assert video.at(0).shape[0] == info["num_frames"]
        keys.append(info["key"])
    assert sorted(keys) == sorted(k for s in manifest["shards"] for k in s["keys"])


def test_index_files_equal_dali_wds2idx_output(packed, tmp_path):
    from wds2idx import IndexCreator

    for tar in sorted((packed / "train").glob("*.tar")):
        ref = tmp_path / (tar.stem + ".idx")
        with IndexCreator(str(tar), str(ref), verbose=False) as creator:
            creator.create_index()
        assert tar.with_suffix(".idx").read_text() == ref.read_text()


def test_output_is_byte_identical_across_runs_and_worker_counts(synth_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pack_corpus("phoenix2014", a, root=synth_root, workers=1, progress=False, max_samples=4)
    pack_corpus("phoenix2014", b, root=synth_root, workers=2, progress=False, max_samples=4)
    ta, tb = _tree_bytes(a), _tree_bytes(b)
    assert ta.keys() == tb.keys() and len(ta) > 5
    assert all(ta[k] == tb[k] for k in ta), [k for k in ta if ta[k] != tb[k]]


@pytest.mark.slow
def test_resume_after_kill_mid_shard_gives_uninterrupted_bytes(synth_root, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    pack_corpus("phoenix2014", ref, root=synth_root, workers=1, progress=False, max_samples=2)
    cmd = [
        sys.executable,
        "-m",
        "signstream.tools.cli",
        "pack",
        "phoenix2014",
        "--root",
        str(synth_root),
        "--out",
        str(out),
        "--workers",
        "1",
        "--max-samples",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    state = out / "train" / STATE_FILE
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["shards"]:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "pack finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A kill mid-write leaves a temporary file; it must not look like a shard.
    (out / "train" / ".train-000001.tar.partial.tmp").write_bytes(b"half a shard")
    assert not (out / "train" / "manifest.json").exists()
    done_before = json.loads(state.read_text())["shards"]
    pack_corpus("phoenix2014", out, root=synth_root, workers=1, progress=False, max_samples=2)
    assert _tree_bytes(out) == _tree_bytes(ref)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(STATE_FILE))
    assert done_before  # at least one shard was kept from the killed run


def test_rerun_of_complete_output_is_a_no_op_and_other_options_need_overwrite(packed, synth_root, capsys):
    before = _tree_bytes(packed)
    pack_corpus("phoenix2014", packed, root=synth_root, workers=1, progress=False, max_samples=4)
    assert _tree_bytes(packed) == before
    with pytest.raises(SignstreamError, match="--overwrite"):
        pack_corpus("phoenix2014", packed, root=synth_root, workers=1, progress=False, max_samples=3)


def _copy_corpus(synth_root: Path, tmp_path: Path) -> tuple[Path, list]:
    root = tmp_path / "corpus"
    shutil.copytree(synth_root, root)
    return root, phoenix2014(root)


def test_bad_rows_are_skipped_with_reasons_and_listed_in_manifest(synth_root, tmp_path, capsys):
    root, rows = _copy_corpus(synth_root, tmp_path)
    train = [r for r in rows if r.split == "train"]
    for f in train[0].frames:  # missing frames
        os.unlink(f)
    Path(train[1].frames[2]).write_bytes(b"not a png")  # unreadable frame
    cv2.imwrite(train[2].frames[1], np.zeros((10, 12, 3), np.uint8))  # mixed sizes
    pack_corpus("phoenix2014", tmp_path / "out", root=root, workers=1, progress=False)
    manifest = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    reasons = {s["name"]: s["reason"] for s in manifest["skipped"]}
    assert "no frames match" in reasons[train[0].name]
    assert "unreadable frame" in reasons[train[1].name] and train[1].frames[2] in reasons[train[1].name]
    assert "mixed frame sizes" in reasons[train[2].name]
    assert manifest["totals"]["samples"] == len(train) - 3
    assert all(s["row"] >= 2 for s in manifest["skipped"])
    err = capsys.readouterr().err
    assert err.count("warning: skipped train row") == 3


def test_grayscale_and_rgba_frames_are_converted_to_rgb(synth_root, tmp_path):
    root, rows = _copy_corpus(synth_root, tmp_path)
    dev = [r for r in rows if r.split == "dev"]
    for f in dev[0].frames:
        cv2.imwrite(f, cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2GRAY))
    for f in dev[1].frames:
        cv2.imwrite(f, cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2BGRA))
    result = pack_corpus("phoenix2014", tmp_path / "out", root=root, workers=1, progress=False, splits=["dev"])
    assert result["splits"]["dev"]["totals"]["samples"] == len(dev)
    assert result["splits"]["dev"]["skipped"] == []


def test_bad_root_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    assert cli(["pack", "phoenix2014", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0] and "Traceback" not in err[0]
    (tmp_path / "empty").mkdir()
    assert cli(["pack", "phoenix2014t", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "does not look like PHOENIX-2014-T" in capsys.readouterr().err


def test_an_unknown_corpus_layout_names_it_and_the_choices(tmp_path, capsys):
    with pytest.raises(
        SignstreamError, match="unknown corpus layout 'nope'; choose from csv, phoenix2014, phoenix2014t"
    ):
        pack_corpus("nope", tmp_path / "o", root=tmp_path, progress=False)
    with pytest.raises(SystemExit) as exc:  # argparse refuses it, with the choices the records give
        cli(["pack", "nope", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and all(n in err[0] for n in ("csv", "phoenix2014", "phoenix2014t"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "layout, given, says",
    [
        ("csv", {"root": "r"}, "the csv layout needs --table FILE"),
        ("phoenix2014", {"table": "t.csv"}, "the phoenix2014 layout needs --root DIR"),
        ("csv", {"table": "t.csv", "root": "r"}, "the csv layout reads --table, not --root"),
        ("phoenix2014t", {"root": "r", "table": "t.csv"}, "the phoenix2014t layout reads --root, not --table"),
    ],
)
def test_the_layout_record_says_whether_it_reads_a_root_or_a_table(tmp_path, layout, given, says):
    with pytest.raises(SignstreamError, match=says):
        pack_corpus(layout, tmp_path / "o", progress=False, **{k: tmp_path / v for k, v in given.items()})
    assert not (tmp_path / "o").exists()


def test_bad_table_is_a_one_line_error(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("name,video,gloss\na,b.mp4,X\n")
    assert cli(["pack", "csv", "--table", str(table), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing column(s) path" in err[0]


def test_nothing_packed_exits_non_zero(synth_root, tmp_path, capsys):
    root, rows = _copy_corpus(synth_root, tmp_path)
    for r in rows:
        for f in r.frames:
            os.unlink(f)
    code = cli(["pack", "phoenix2014", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "nothing packed" in capsys.readouterr().err
    assert not list((tmp_path / "o").rglob("manifest.json"))  # a rerun after a fix starts afresh


def test_csv_adapter_packs_video_files_and_frame_globs_and_reports_missing_video(synth_root, tmp_path):
    rows = [r for r in phoenix2014(synth_root) if r.split == "test"]
    video = tmp_path / "clip.with.dots.mp4"
    frames = np.stack([cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in rows[0].frames])
    from signstream.tools.encode import CODECS, encode_video

    video.write_bytes(encode_video(frames, CODECS["h264"]))
    table = tmp_path / "table.tsv"
    table.write_text(
        "name\tpath\tgloss\tsigner\tsplit\n"
        f"clip.with.dots\t{video.name}\tA B\tS1\ttrain\n"
        f"frames\t{Path(rows[1].frames[0]).parent}/*.png\tB C\tS2\ttrain\n"
        "gone\tmissing.mp4\tC\tS3\ttrain\n"
    )
    result = pack_corpus("csv", tmp_path / "out", table=table, workers=1, progress=False)
    m = result["splits"]["train"]
    assert m["totals"]["samples"] == 2 and m["totals"]["frames"] == len(rows[0].frames) + len(rows[1].frames)
    assert [s["name"] for s in m["skipped"]] == ["gone"]
    assert m["shards"][0]["keys"][0] == "clip_with_dots"
    assert result["vocab"] == ["A", "B", "C"]


def test_manifest_records_shards_totals_options_and_versions(packed):
    m = json.loads((packed / "train" / "manifest.json").read_text())
    assert m["codec"] == "vp9" and m["video_ext"] == "webm" and m["options"]["quality"] == 30
    for shard in m["shards"]:
        assert set(shard) >= {"file", "sha256", "samples", "frames", "bytes", "index", "keys"}
        assert (packed / "train" / shard["file"]).stat().st_size == shard["bytes"]
        assert index_text(scan_tar(packed / "train" / shard["file"])) == (packed / "train" / shard["index"]).read_text()
    assert m["totals"]["samples"] == sum(s["samples"] for s in m["shards"]) == 6
    assert m["totals"]["png_bytes"] > m["totals"]["bytes"]
    assert {"signstream", "av", "numpy"} <= set(m["versions"])
    vocab = (packed / "glosses.txt").read_text().split()
    assert vocab == sorted(vocab) and len(vocab) == len(set(vocab)) > 0
