"""Corpus layout records: a new layout is one record, detection, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.loaders.corpora import (
    LAYOUTS,
    Layout,
    Row,
    detect_layout,
    get_layout,
    register_layout,
)
from signstream.loaders.pngdir import corpus_items
from signstream.tools.cli import main as cli


def read_lst(table, splits=None) -> list[Row]:
    """A tiny custom format: one ``split name frame_folder GLOSS...`` line per video, no header."""
    table = Path(table)
    rows = []
    for lineno, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
        split, name, folder, *glosses = line.split()
        frames = tuple(sorted(str(f) for f in Path(folder).glob("*.png")))
        rows.append(
            Row(
                split,
                name,
                lineno,
                str(table),
                frames=frames,
                gloss=" ".join(glosses),
                problem=None if frames else f"no frames in {folder}",
            )
        )
    return rows


@pytest.fixture
def lst_layout():
    """The custom layout, registered for one test and removed after it."""
    layout = register_layout(
        Layout(
            "lst",
            read_lst,
            "table",
            lambda p: p.is_file() and p.suffix == ".lst",
            "one 'split name folder GLOSS...' line per video",
        )
    )
    yield layout
    del LAYOUTS["lst"]


@pytest.fixture
def lst_table(synth_root, tmp_path):
    """A ``.lst`` table of the synthetic corpus' dev videos (their own frame folders)."""
    dev = get_layout("phoenix2014").read(synth_root, splits=["dev"])
    table = tmp_path / "corpus.lst"
    table.write_text("".join(f"dev clip.{i} {Path(r.frames[0]).parent} {r.gloss}\n" for i, r in enumerate(dev)))
    return table, dev


def test_a_registered_layout_is_packable_and_loadable_with_nothing_else_touched(lst_layout, lst_table, tmp_path):
    table, dev = lst_table
    out = tmp_path / "shards"
    assert cli(["pack", "lst", "--table", str(table), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    manifest = json.loads((out / "dev" / "manifest.json").read_text())
    packed = [k for shard in manifest["shards"] for k in shard["keys"]]
    assert packed == [f"clip_{i}" for i in range(len(dev))] and manifest["skipped"] == []
    assert manifest["totals"]["frames"] == sum(len(r.frames) for r in dev)
    # the frame-folder loader recognises the table by the record's detect alone
    assert [it.meta["key"] for it in corpus_items(table, split="dev")] == packed
    loader = make_loader(
        table,
        backend="pngdir",
        split="dev",
        batch_size=len(dev),
        num_workers=0,
        rank=0,
        world_size=1,
        transform=Transform(size=32, output="uint8"),
    )
    (batch,) = list(loader)
    assert batch.keys == packed and batch.lengths.tolist() == [len(r.frames) for r in dev]


def test_pack_help_lists_a_registered_layout(lst_layout, capsys):
    with pytest.raises(SystemExit):
        cli(["pack", "--help"])
    assert "lst (one 'split name folder GLOSS...' line per video)" in " ".join(capsys.readouterr().out.split())


def test_detection_picks_the_layout_of_each_source(synth_root, tmp_path):
    assert detect_layout(synth_root).name == "phoenix2014"
    assert detect_layout(synth_root.parents[1]).name == "phoenix2014"  # the folder synth wrote into
    table = tmp_path / "t.tsv"
    table.write_text("name\tpath\tgloss\n")
    assert detect_layout(table).name == "csv"


def test_a_source_no_layout_recognises_is_one_line_naming_every_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(SignstreamError) as exc:
        detect_layout(tmp_path / "notes.txt")
    assert "\n" not in str(exc.value) and all(n in str(exc.value) for n in LAYOUTS)
    with pytest.raises(SignstreamError, match="not found"):
        detect_layout(tmp_path / "missing")


def test_two_layouts_recognising_one_source_is_an_error_naming_both(lst_layout, tmp_path):
    register_layout(Layout("lst2", read_lst, "table", lambda p: p.suffix == ".lst", "the same"))
    try:
        (tmp_path / "a.lst").write_text("")
        with pytest.raises(SignstreamError, match=r"several corpus layouts \(lst, lst2\)"):
            detect_layout(tmp_path / "a.lst")
    finally:
        del LAYOUTS["lst2"]


def test_an_unknown_layout_name_is_one_line_listing_the_known_ones(tmp_path):
    with pytest.raises(
        SignstreamError, match="unknown corpus layout 'nope'; choose from csv, phoenix2014, phoenix2014t$"
    ):
        get_layout("nope")
    with pytest.raises(SignstreamError, match="unknown corpus layout 'nope'"):
        corpus_items(tmp_path, split="dev", layout="nope")


@pytest.mark.parametrize(
    "name, takes, says",
    [
        ("phoenix2014", "root", "registered twice"),
        ("../up", "table", "not a plain name"),
        ("ok", "folder", "takes must be"),
    ],
)
def test_register_layout_refuses_a_bad_record(name, takes, says):
    with pytest.raises(ValueError, match=says):
        register_layout(Layout(name, read_lst, takes, lambda p: False, ""))
    assert "ok" not in LAYOUTS and "../up" not in LAYOUTS
