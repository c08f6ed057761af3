"""Hostile inputs to ``signstream pack``: each is one line on stderr, exit code 2,
and nothing written to ``--out``; a byte-order mark in a table is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from signstream.loaders.corpora import phoenix2014

pytestmark = pytest.mark.hostile


def _pack(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pack",
        "phoenix2014",
        "--root",
        str(root),
        "--out",
        str(out),
        "--splits",
        "dev",
        "--workers",
        "1",
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--quality", "999"], "--quality 999 is out of range for vp9 (0-63)"),
        (["--codec", "h264", "--quality", "52"], "out of range for h264 (0-51)"),
        (["--codec", "mjpeg", "--quality", "0"], "out of range for mjpeg (1-31)"),
        (["--speed", "fast"], "is not a vp9 speed"),
        (["--codec", "h264", "--speed", "quick"], "is not an h264 preset"),
        (["--codec", "mjpeg", "--speed", "4"], "mjpeg has no speed setting"),
        (["--workers", "-3"], "--workers: must be at least 1, got -3"),
        (["--workers", "0"], "--workers: must be at least 1, got 0"),
        (["--gop", "-1"], "--gop: must be at least 1, got -1"),
        (["--gop", "two"], "--gop: expected a whole number"),
        (["--max-samples", "0"], "--max-samples: must be at least 1"),
        (["--resize", "big"], "--resize: expected HEIGHTxWIDTH"),
        (["--max-bytes", "lots"], "--max-bytes: expected a size"),
    ],
)
def test_bad_encoder_and_worker_options_are_one_line_before_anything_is_written(
    synth_root, tmp_path, extra, says, run_cli, one_line
):
    out = tmp_path / "out"
    assert run_cli(_pack(synth_root, out, *extra)) == 2
    assert says in one_line()
    assert not out.exists()


def test_out_that_is_an_existing_file_is_a_one_line_error(synth_root, tmp_path, run_cli, one_line):
    out = tmp_path / "out"
    out.write_text("my notes\n")
    assert run_cli(_pack(synth_root, out)) == 2
    assert "exists and is not a directory" in one_line()
    assert out.read_text() == "my notes\n"


def test_split_path_that_is_a_file_is_a_one_line_error(synth_root, tmp_path, run_cli, one_line):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dev").write_text("not a folder\n")
    assert run_cli(_pack(synth_root, out)) == 2
    assert "dev exists and is not a directory" in one_line()
    assert sorted(p.name for p in out.iterdir()) == ["dev"]


def _csv_table(synth_root: Path, tmp_path: Path, encoding: str, gloss: str) -> Path:
    row = next(r for r in phoenix2014(synth_root) if r.split == "dev")
    folder = Path(row.frames[0]).parent
    table = tmp_path / "table.csv"
    table.write_bytes(f"name,path,gloss,split\nclip,{folder}/*.png,{gloss},dev\n".encode(encoding))
    return table


def test_table_that_is_not_utf8_is_a_one_line_error(synth_root, tmp_path, run_cli, one_line):
    table = _csv_table(synth_root, tmp_path, "latin-1", "GRÜN")
    out = tmp_path / "out"
    assert run_cli(["pack", "csv", "--table", str(table), "--out", str(out), "--quiet"]) == 2
    line = one_line()
    assert "not UTF-8" in line and "table.csv" in line
    assert not out.exists()


def test_table_with_a_utf8_byte_order_mark_packs(synth_root, tmp_path, run_cli):
    table = _csv_table(synth_root, tmp_path, "utf-8-sig", "GRÜN")
    assert table.read_bytes().startswith(b"\xef\xbb\xbf")
    out = tmp_path / "out"
    assert run_cli(["pack", "csv", "--table", str(table), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    assert (out / "glosses.txt").read_text(encoding="utf-8") == "GRÜN\n"


@pytest.mark.parametrize("split", ["../escape", "a/b", "."])
def test_table_split_that_is_not_a_plain_name_cannot_leave_out(synth_root, tmp_path, split, run_cli, one_line):
    row = next(r for r in phoenix2014(synth_root) if r.split == "dev")
    table = tmp_path / "t" / "table.csv"
    table.parent.mkdir()
    table.write_text(f"name,path,gloss,split\nclip,{Path(row.frames[0]).parent}/*.png,A,{split}\n")
    out = tmp_path / "t" / "out"
    assert run_cli(["pack", "csv", "--table", str(table), "--out", str(out), "--quiet"]) == 2
    assert "is not a plain name" in one_line()
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["table.csv"]
