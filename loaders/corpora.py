"""Corpus tables: turn a dataset's own layout into a list of :class:`Row`.

The one reader of corpus tables (PHOENIX-2014 multisigner or SI5, PHOENIX-2014-T, generic
CSV/TSV): ``signstream pack`` and the PNG-folder loader both list videos through it. Each layout
is one :class:`Layout` record in :data:`LAYOUTS` (reader, root or table, how to recognise one),
so a new layout is one :func:`register_layout` call. Readers only *describe* the videos (frames or
video file); reading the pixels is the caller's job, so one broken row never stops the listing.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from signstream import SignstreamError, lookup

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
        raise SignstreamError(f"{path}: missing column(s) {', '.join(missing)} (header is {'|'.join(header)})")


def _resolve_frames(base: Path, pattern: str) -> list[str]:
    """Expand a frame glob relative to ``base``; sorted file names = temporal order."""
    return sorted(glob.glob(str(base / pattern)))


# Where a PHOENIX release keeps its corpus folder, relative to the root a user names.
_P2014_BASES = (
    "phoenix2014-release/phoenix-2014-multisigner",
    "phoenix-2014-multisigner",
    "phoenix-2014-signerindependent-SI5",
    "phoenix2014-release/phoenix-2014-signerindependent-SI5",
)
_P2014T_BASES = ("PHOENIX-2014-T-release-v3/PHOENIX-2014-T", "PHOENIX-2014-T")


def _frames_row(split, name, lineno, table, frames, problem_if_empty, **kw) -> Row:
    problem = None if frames else problem_if_empty
    return Row(split, name, lineno, str(table), frames=tuple(frames), problem=problem, **kw)


def phoenix2014(root: str | os.PathLike, splits=None) -> list[Row]:
    """PHOENIX-2014 (multisigner or SI5): ``id|folder|signer|annotation`` tables.

    Args:
        root: the ``phoenix2014-release`` directory, the ``phoenix-2014-multisigner``
            (or ``phoenix-2014-signerindependent-SI5``) directory inside it, or a
            directory holding ``phoenix2014-release``.
        splits: which splits to list (default: train, dev and test).
    """
    base = _find_base(
        Path(root), _P2014_BASES, "annotations/manual", "PHOENIX-2014 (expects annotations/manual/<split>.corpus.csv)"
    )
    out = []
    for split in splits or SPLITS:
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
            out.append(
                _frames_row(
                    split,
                    r["id"],
                    lineno,
                    table,
                    frames,
                    f"no frames match {frame_root / r['folder']}",
                    signer=r["signer"],
                    gloss=r["annotation"],
                )
            )
    return out


def phoenix2014t(root: str | os.PathLike, splits=None) -> list[Row]:
    """PHOENIX-2014-T: ``name|video|start|end|speaker|orth|translation`` tables.

    The ``video`` column reads ``<name>/1/*.png`` but the release stores frames as
    ``<name>/images0001.png``; the glob is tried first, then ``<name>/*.png``.
    """
    base = _find_base(
        Path(root),
        _P2014T_BASES,
        "annotations/manual",
        "PHOENIX-2014-T (expects annotations/manual/PHOENIX-2014-T.<split>.corpus.csv)",
    )
    out = []
    for split in splits or SPLITS:
        table = base / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv"
        header, rows = _read_table(table, "|")
        _require_columns(table, header, ("name", "video", "speaker", "orth", "translation"))
        frame_root = base / "features" / "fullFrame-210x260px" / split
        for lineno, r in rows:
            if "__error__" in r:
                out.append(Row(split, f"<row {lineno}>", lineno, str(table), problem=r["__error__"]))
                continue
            frames = _resolve_frames(frame_root, r["video"]) or _resolve_frames(frame_root, f"{r['name']}/*.png")
            out.append(
                _frames_row(
                    split,
                    r["name"],
                    lineno,
                    table,
                    frames,
                    f"no frames match {frame_root / r['video']} nor {r['name']}/*.png",
                    signer=r["speaker"],
                    gloss=r["orth"],
                    text=r["translation"],
                )
            )
    return out


def csv_table(
    table: str | os.PathLike, split_column: str = "split", default_split: str = "train", splits=None
) -> list[Row]:
    """Generic table (CSV, TSV or ``|``-separated, detected from the header).

    Columns: ``name``, ``path`` (a video file or a frame glob, relative to the
    table's directory unless absolute), ``gloss``; optional ``signer``, ``text``
    and ``split`` (rows without a split column go to ``default_split``).
    ``splits`` keeps only the rows of those splits (default: every row).
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
            raise SignstreamError(
                f"{table}:{lineno}: split {split!r} is not a plain name (letters, digits, '_' and '-' only)"
            )
        if splits and split not in splits:
            continue
        meta = dict(signer=r.get("signer", ""), gloss=r["gloss"], text=r.get("text", ""))
        path = Path(r["path"]) if os.path.isabs(r["path"]) else table.parent / r["path"]
        if path.suffix.lower() in VIDEO_SUFFIXES and not any(ch in r["path"] for ch in "*?["):
            problem = None if path.is_file() else f"video file not found: {path}"
            out.append(Row(split, r["name"], lineno, str(table), video=str(path), problem=problem, **meta))
        else:
            pattern = str(path / "*.png") if path.is_dir() else str(path)
            frames = sorted(glob.glob(pattern))
            out.append(_frames_row(split, r["name"], lineno, table, frames, f"no frames match {pattern}", **meta))
    return out


def _find_base(root: Path, candidates: tuple[str, ...], marker: str, what: str) -> Path:
    if not root.is_dir():
        raise SignstreamError(f"--root is not a directory: {root}")
    for cand in ("", *candidates):
        base = root / cand if cand else root
        if (base / marker).is_dir():
            return base
    raise SignstreamError(f"--root {root} does not look like {what}")


# ------------------------------------------------------------------------- layout records
@dataclass(frozen=True)
class Layout:
    """One corpus layout: how to read it and how to recognise it.

    Attributes:
        name: the name ``signstream pack NAME`` and ``layout=`` take (letters, digits, ``_``, ``-``).
        reader: ``reader(source, splits=None) -> list[Row]``, the rows in table order; ``splits``
            (a tuple of split names, or ``None`` for all) lets it skip work, :meth:`read` filters anyway.
        takes: ``"root"`` (a corpus folder, ``--root DIR``) or ``"table"`` (a table file, ``--table FILE``).
        detect: ``detect(path) -> bool``, whether ``path`` is a source of this layout; cheap
            (no walking frame folders) and never raising.
        description: one line for ``--help`` and for messages, e.g. what the source must hold.
    """

    name: str
    reader: Callable[..., list[Row]]
    takes: Literal["root", "table"]
    detect: Callable[[Path], bool]
    description: str

    def read(self, source: str | os.PathLike, splits=None) -> list[Row]:
        """The rows of ``source`` (those of ``splits`` only, when given), in table order."""
        splits = tuple(splits) if splits else None
        rows = self.reader(source, splits=splits)
        return [r for r in rows if r.split in splits] if splits else list(rows)


LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add a corpus layout; ``signstream pack`` and the PNG-folder loader take it by name at once.

    Returns:
        ``layout``, unchanged.

    Raises:
        ValueError: if the name is taken or not a plain name, or ``takes`` is neither
            ``"root"`` nor ``"table"`` (programming errors).
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", layout.name):
        raise ValueError(f"corpus layout name {layout.name!r} is not a plain name (letters, digits, '_', '-')")
    if layout.takes not in ("root", "table"):
        raise ValueError(f"corpus layout {layout.name!r}: takes must be 'root' or 'table', not {layout.takes!r}")
    if layout.name in LAYOUTS:
        raise ValueError(f"corpus layout {layout.name!r} is registered twice")
    LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    """The registered layout called ``name``; an unknown name is one line listing the known ones."""
    return lookup(LAYOUTS, name, "corpus layout")


def detect_layout(path: str | os.PathLike) -> Layout:
    """The one registered layout whose ``detect`` recognises ``path``.

    Raises:
        SignstreamError: ``path`` does not exist, or no layout or more than one recognises it.
    """
    path = Path(path)
    if not path.exists():
        raise SignstreamError(f"corpus root or table not found: {path}")
    found = [lay for lay in LAYOUTS.values() if lay.detect(path)]
    if len(found) == 1:
        return found[0]
    if found:
        raise SignstreamError(
            f"{path} looks like several corpus layouts ({', '.join(f.name for f in found)}); name one with layout="
        )
    known = "; ".join(f"{lay.name}: {lay.description}" for lay in sorted(LAYOUTS.values(), key=lambda x: x.name))
    raise SignstreamError(
        f"cannot tell the corpus layout of {path}: none recognises it ({known}); name one with layout="
    )


def _has_table(root: Path, bases: tuple[str, ...], pattern: str) -> bool:
    """Whether ``root`` or one of its ``bases`` holds an ``annotations/manual`` table named like ``pattern``."""
    for base in ("", *bases):
        manual = root / base / "annotations" / "manual"
        try:
            if manual.is_dir() and any(re.fullmatch(pattern, p.name) for p in manual.iterdir()):
                return True
        except OSError:  # unreadable folder: not recognised, the reader names the problem
            continue
    return False


def _is_generic_table(path: Path) -> bool:
    """A file whose header line has a ``name`` column (the reader checks the other columns)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline(65536).strip("\r\n")
    except (OSError, UnicodeDecodeError):
        return False
    delimiter = max(("|", "\t", ","), key=first.count)
    return "name" in (h.strip() for h in first.split(delimiter))


register_layout(
    Layout(
        "phoenix2014",
        phoenix2014,
        "root",
        lambda p: p.is_dir() and _has_table(p, _P2014_BASES, r"(train|dev|test)(\.SI5)?\.corpus\.csv"),
        "PHOENIX-2014 multisigner or SI5 root (annotations/manual/<split>.corpus.csv)",
    )
)
register_layout(
    Layout(
        "phoenix2014t",
        phoenix2014t,
        "root",
        lambda p: p.is_dir() and _has_table(p, _P2014T_BASES, r"PHOENIX-2014-T\.(train|dev|test)\.corpus\.csv"),
        "PHOENIX-2014-T root (annotations/manual/PHOENIX-2014-T.<split>.corpus.csv)",
    )
)
register_layout(
    Layout(
        "csv",
        csv_table,
        "table",
        lambda p: p.is_file() and _is_generic_table(p),
        "CSV/TSV/|-separated table with name, path, gloss[, signer, text, split] columns",
    )
)
