"""Corpus tables: turn a dataset's own layout into a list of :class:`Row`.

Each adapter reads one corpus layout (PHOENIX-2014 multisigner or SI5,
PHOENIX-2014-T, or a generic CSV/TSV table) and yields rows in table order.
This is the one reader of corpus tables: ``signstream pack`` and the PNG-folder
loader both list videos through it. Adapters only *describe* the videos (where
the frames or the video file are); reading and validating the pixels is the
caller's job, so one broken row never stops the listing.

Adapters are plain functions in :data:`ADAPTERS`, chosen by name with :func:`signstream.lookup`.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from signstream import SignstreamError

SPLITS = ("train", "dev", "test")
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class Row:
    """One video of a corpus, as its table describes it.

    Attributes:
        split: ``train``, ``dev`` or ``test`` (or any split name of a generic table).
        name: the corpus' own id of the video (may contain dots).
        row: 1-based line number in the table (header = line 1), for messages.
        table: the table file this row came from.
        frames: sorted frame files, when the source is a frame folder.
        video: a video file, when the source is a video.
        signer: signer id ("" when unknown).
        gloss: space-separated gloss sequence.
        text: spoken-language translation ("" when none).
        problem: why the source could not be resolved (row is then skipped).
    """

    split: str
    name: str
    row: int
    table: str
    frames: tuple[str, ...] = ()
    video: str | None = None
    signer: str = ""
    gloss: str = ""
    text: str = ""
    problem: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


def _read_table(path: Path, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, dict]]]:
    """Read a delimited table; returns (header, [(line_number, row_dict)])."""
    if not path.is_file():
        raise SignstreamError(f"corpus table not found: {path}")
    try:
        # utf-8-sig: a byte-order mark (common from spreadsheet exports) is not part of the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise SignstreamError(f"corpus table is not UTF-8 text: {path} (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise SignstreamError(f"cannot read corpus table {path}: {exc.strerror}") from None
    if not text.strip():
        raise SignstreamError(f"corpus table is empty: {path}")
    if delimiter is None:
        first = text.splitlines()[0]
        delimiter = max(("|", "\t", ","), key=first.count)
    reader = csv.reader(text.splitlines(), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    header = [h.strip() for h in next(reader)]
    rows = []
    for lineno, values in enumerate(reader, start=2):
        if not values or not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            rows.append((lineno, {"__error__": f"expected {len(header)} columns, got {len(values)}"}))
            continue
        rows.append((lineno, dict(zip(header, (v.strip() for v in values)))))
    return header, rows


def _require_columns(path: Path, header: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise SignstreamError(
            f"{path}: missing column(s) {', '.join(missing)} (header is {'|'.join(header)})"
        )


def _resolve_frames(base: Path, pattern: str) -> list[str]:
    """Expand a frame glob relative to ``base``; sorted file names = temporal order."""
    return sorted(glob.glob(str(base / pattern)))


def _frames_row(split, name, lineno, table, frames, problem_if_empty, **kw) -> Row:
    problem = None if frames else problem_if_empty
    return Row(split, name, lineno, str(table), frames=tuple(frames), problem=problem, **kw)


def phoenix2014(root: str | os.PathLike, splits=SPLITS) -> list[Row]:
    """PHOENIX-2014 (multisigner or SI5): ``id|folder|signer|annotation`` tables.

    Args:
        root: the ``phoenix2014-release`` directory, the ``phoenix-2014-multisigner``
            (or ``phoenix-2014-signerindependent-SI5``) directory inside it, or a
            directory holding ``phoenix2014-release``.
        splits: which splits to list.
    """
    base = _find_base(
        Path(root),
        ("phoenix2014-release/phoenix-2014-multisigner", "phoenix-2014-multisigner",
         "phoenix-2014-signerindependent-SI5", "phoenix2014-release/phoenix-2014-signerindependent-SI5"),
        "annotations/manual",
        "PHOENIX-2014 (expects annotations/manual/<split>.corpus.csv)",
    )
    out = []
    for split in splits:
        table = base / "annotations" / "manual" / f"{split}.corpus.csv"
        if not table.exists():
            si5 = base / "annotations" / "manual" / f"{split}.SI5.corpus.csv"
            table = si5 if si5.exists() else table
        header, rows = _read_table(table, "|")
        _require_columns(table, header, ("id", "folder", "signer", "annotation"))
        frame_root = base / "features" / "fullFrame-210x260px" / split
        for lineno, r in rows:
            if "__error__" in r:
                out.append(Row(split, f"<row {lineno}>", lineno, str(table), problem=r["__error__"]))
                continue
            frames = _resolve_frames(frame_root, r["folder"])
            out.append(_frames_row(split, r["id"], lineno, table, frames,
                                   f"no frames match {frame_root / r['folder']}",
                                   signer=r["signer"], gloss=r["annotation"]))
    return out


def phoenix2014t(root: str | os.PathLike, splits=SPLITS) -> list[Row]:
    """PHOENIX-2014-T: ``name|video|start|end|speaker|orth|translation`` tables.

    The ``video`` column reads ``<name>/1/*.png`` but the release stores frames as
    ``<name>/images0001.png``; the glob is tried first, then ``<name>/*.png``.
    """
    base = _find_base(
        Path(root),
        ("PHOENIX-2014-T-release-v3/PHOENIX-2014-T", "PHOENIX-2014-T"),
        "annotations/manual",
        "PHOENIX-2014-T (expects annotations/manual/PHOENIX-2014-T.<split>.corpus.csv)",
    )
    out = []
    for split in splits:
        table = base / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv"
        header, rows = _read_table(table, "|")
        _require_columns(table, header, ("name", "video", "speaker", "orth", "translation"))
        frame_root = base / "features" / "fullFrame-210x260px" / split
        for lineno, r in rows:
            if "__error__" in r:
                out.append(Row(split, f"<row {lineno}>", lineno, str(table), problem=r["__error__"]))
                continue
            frames = _resolve_frames(frame_root, r["video"]) or _resolve_frames(
                frame_root, f"{r['name']}/*.png")
            out.append(_frames_row(split, r["name"], lineno, table, frames,
                                   f"no frames match {frame_root / r['video']} nor {r['name']}/*.png",
                                   signer=r["speaker"], gloss=r["orth"], text=r["translation"]))
    return out


def csv_table(table: str | os.PathLike, split_column: str = "split", default_split: str = "train") -> list[Row]:
    """Generic table (CSV, TSV or ``|``-separated, detected from the header).

    Columns: ``name``, ``path`` (a video file or a frame glob, relative to the
    table's directory unless absolute), ``gloss``; optional ``signer``, ``text``
    and ``split`` (rows without a split column go to ``default_split``).
    """
    table = Path(table)
    header, rows = _read_table(table)
    _require_columns(table, header, ("name", "path", "gloss"))
    out = []
    for lineno, r in rows:
        if "__error__" in r:
            out.append(Row(default_split, f"<row {lineno}>", lineno, str(table), problem=r["__error__"]))
            continue
        split = r.get(split_column) or default_split
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            # The split names a directory under --out: nothing that could leave it.
            raise SignstreamError(f"{table}:{lineno}: split {split!r} is not a plain name "
                                  "(letters, digits, '_' and '-' only)")
        meta = dict(signer=r.get("signer", ""), gloss=r["gloss"], text=r.get("text", ""))
        path = Path(r["path"]) if os.path.isabs(r["path"]) else table.parent / r["path"]
        if path.suffix.lower() in VIDEO_SUFFIXES and not any(ch in r["path"] for ch in "*?["):
            problem = None if path.is_file() else f"video file not found: {path}"
            out.append(Row(split, r["name"], lineno, str(table), video=str(path), problem=problem, **meta))
        else:
            pattern = str(path / "*.png") if path.is_dir() else str(path)
            frames = sorted(glob.glob(pattern))
            out.append(_frames_row(split, r["name"], lineno, table, frames,
                                   f"no frames match {pattern}", **meta))
    return out


def _find_base(root: Path, candidates: tuple[str, ...], marker: str, what: str) -> Path:
    if not root.is_dir():
        raise SignstreamError(f"--root is not a directory: {root}")
    for cand in ("", *candidates):
        base = root / cand if cand else root
        if (base / marker).is_dir():
            return base
    raise SignstreamError(f"--root {root} does not look like {what}")


ADAPTERS: dict[str, Callable[..., list[Row]]] = {
    "phoenix2014": phoenix2014,
    "phoenix2014t": phoenix2014t,
    "csv": csv_table,
}
