"""Stale metadata is never kept: after the signer or text column of the gloss table is edited,
or a source file is replaced at the same path, a rerun of ``pack`` is refused as packed from
other rows (never "already packed"), an unfinished split is not resumed into a mix of old and
new rows, and ``--overwrite`` writes the new values."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from signstream import SignstreamError
from signstream.loaders.corpora import phoenix2014
from signstream.loaders.format import read_json_members
from signstream.tools import pack as pack_mod
from signstream.tools.pack import STATE_FILE, pack_corpus

pytestmark = pytest.mark.hostile


def _corpus(synth_root: Path, tmp_path: Path) -> list[Path]:
    """Copies of the dev frame folders (so tests may change them)."""
    folders = []
    for row in (r for r in phoenix2014(synth_root) if r.split == "dev"):
        folders.append(tmp_path / "frames" / row.name)
        shutil.copytree(Path(row.frames[0]).parent, folders[-1])
    return folders


def _table(tmp_path: Path, folders: list[Path], signer: str = "S1", text: str = "hello") -> Path:
    table = tmp_path / "table.csv"
    lines = ["name,path,gloss,signer,text,split"]
    lines += [f"clip{i},{f}/*.png,AA BB,{signer},{text},dev" for i, f in enumerate(folders)]
    table.write_text("\n".join(lines) + "\n")
    return table


def _pack(table: Path, out: Path, *extra: str) -> list[str]:
    return ["pack", "csv", "--table", str(table), "--out", str(out), "--workers", "1", "--quiet", *extra]


def _meta(out: Path) -> list[dict]:
    return [m for shard in sorted((out / "dev").glob("dev-*.tar")) for m in read_json_members(shard)]


@pytest.mark.parametrize("column, value", [("signer", "S2"), ("text", "goodbye")])
def test_edited_table_column_is_refused_not_answered_already_packed_and_overwrite_writes_it(
    synth_root, tmp_path, run_cli, one_line, capsys, column, value
):
    folders, out = _corpus(synth_root, tmp_path), tmp_path / "out"
    assert run_cli(_pack(_table(tmp_path, folders), out)) == 0
    capsys.readouterr()
    table = _table(tmp_path, folders, **{column: value})
    assert run_cli(_pack(table, out)) == 2
    line = one_line()
    assert "packed from other rows or options" in line and "--overwrite" in line
    assert {m[column] for m in _meta(out)} != {value}  # the old shards are left as they were
    assert run_cli(_pack(table, out, "--overwrite")) == 0
    assert {m[column] for m in _meta(out)} == {value}


def test_source_frame_replaced_at_the_same_path_is_noticed(synth_root, tmp_path, run_cli, one_line, capsys):
    folders, out = _corpus(synth_root, tmp_path), tmp_path / "out"
    table = _table(tmp_path, folders)
    assert run_cli(_pack(table, out)) == 0
    capsys.readouterr()
    frame = sorted(folders[0].glob("*.png"))[0]
    shutil.copyfile(sorted(folders[1].glob("*.png"))[-1], frame)  # other pixels, same name
    assert run_cli(_pack(table, out)) == 2
    assert "packed from other rows or options" in one_line()


def test_unfinished_split_is_not_resumed_after_a_signer_edit(synth_root, tmp_path, monkeypatch):
    folders, out = _corpus(synth_root, tmp_path), tmp_path / "out"
    flush, calls = pack_mod.ShardWriter.flush, []

    def killed_after_one_shard(self, next_row):
        if self.state["shards"]:
            raise KeyboardInterrupt  # as a kill after the first shard
        calls.append(next_row)
        flush(self, next_row)

    monkeypatch.setattr(pack_mod.ShardWriter, "flush", killed_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        pack_corpus("csv", out, table=_table(tmp_path, folders), workers=1, progress=False, max_samples=1)
    assert (out / "dev" / STATE_FILE).is_file() and calls
    monkeypatch.setattr(pack_mod.ShardWriter, "flush", flush)
    table = _table(tmp_path, folders, signer="S2")
    with pytest.raises(SignstreamError, match="unfinished pack of other rows or options"):
        pack_corpus("csv", out, table=table, workers=1, progress=False, max_samples=1)
    pack_corpus("csv", out, table=table, workers=1, progress=False, max_samples=1, overwrite=True)
    assert [m["signer"] for m in _meta(out)] == ["S2"] * len(folders)
