"""``signstream pack``: a corpus into WebDataset shards of compressed video.

Per split it writes ``<split>-NNNNNN.tar`` shards, a DALI index beside each and ``manifest.json``; ``glosses.txt``
(the train vocabulary) goes to the output root. Key invariants: the same rows and options give byte-identical
shards, indexes and manifests whatever ``--workers`` is; a shard appears only when complete and a rerun after a
kill redoes only the shard in progress; ``.signstream.lock`` makes it the one writer of ``--out``, and it deletes
only files it recorded; a bad row is skipped and listed in ``manifest.json["skipped"]``.
Why: docs/design/packing.md
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from signstream import SignstreamError, __version__, lookup
from signstream.loaders import remote
from signstream.loaders.corpora import LAYOUTS, Row, get_layout
from signstream.loaders.cpu import (
    WORKER_TIMEOUT_S,
    available_cores,
    one_opencv_thread,
    worker_timeout_message,
)
from signstream.loaders.fileio import atomic_write, write_json
from signstream.loaders.format import (
    GLOSSES,
    MANIFEST,
    Manifest,
    ShardEntry,
    index_path_for,
    make_keys,
    read_json_members,
    read_manifest,
    sample_members,
    sample_meta_problems,
    sha256_file,
    tar_member_size,
    write_index,
    write_manifest,
    write_tar,
)
from signstream.loaders.outputs import remove_stray_temps
from signstream.loaders.ownership import OutputLock
from signstream.tools import encode as enc
from signstream.tools.packstate import (
    STATE_FILE,  # noqa: F401 - re-exported: the state file name callers look for
    STATS_FILE,
    Slot,
    load_state,
    read_record,
)

HELP = "pack a corpus (PNG frame folders or videos + a gloss table) into WebDataset video shards"
# Largest --resize side: above full HD. A worker holds a whole video's frames, and at
# 2048x2048 a 300-frame video is already 3.8 GB; a bigger value is a typo, not a corpus.
MAX_RESIZE = 2048


@dataclass(frozen=True)
class PackOptions:
    """Everything that changes the bytes of the output (not ``workers``)."""

    codec: str = "vp9"
    quality: int | None = None
    speed: str | None = None
    gop: int | None = None
    resize: tuple[int, int] | None = None
    max_samples: int = 1000
    max_bytes: int = 1 << 30


@dataclass
class Encoded:
    """A worker's result for one row: the sample's members, or why it was skipped."""

    index: int
    members: list[tuple[str, bytes]] | None
    frames: int = 0
    png_bytes: int = 0
    reason: str | None = None


# -------------------------------------------------------------------------- encoding
def encode_row(job: tuple[int, Row, str, PackOptions]) -> Encoded:
    """Read, encode and round-trip-check one row (runs in a worker process)."""
    index, row, key, opts = job
    if row.problem:
        return Encoded(index, None, reason=row.problem)
    codec = enc.CODECS[opts.codec]
    try:
        if row.video:
            frames, fps = enc.read_video_file(row.video, opts.resize)
            src_bytes = os.path.getsize(row.video)
        else:
            frames, fps = enc.read_frames(row.frames, opts.resize), 25
            src_bytes = sum(os.path.getsize(p) for p in row.frames)
        frames, fps = enc.even_size(frames), enc.container_rate(fps)
        t, h, w, _ = frames.shape
        data = enc.encode_video(frames, codec, fps, opts.quality, opts.speed, opts.gop)
        enc.check_round_trip(data, t, h, w)
    except enc.EncodeError as exc:
        return Encoded(index, None, reason=str(exc))
    except FileNotFoundError as exc:
        return Encoded(index, None, reason=f"missing file {exc.filename}")
    except av.FFmpegError as exc:  # the options were checked up front; this is the source's fault
        return Encoded(index, None, reason=f"encoder failed: {exc}")
    meta = {
        "name": row.name,
        "key": key,
        "split": row.split,
        "signer": row.signer,
        "gloss": row.gloss,
        "text": row.text,
        "num_frames": t,
        "fps": float(fps),
        "height": h,
        "width": w,
        "codec": codec.name,
    }
    problems = sample_meta_problems(meta, len(data))  # never write what every reader would refuse
    if problems:
        return Encoded(index, None, reason="; ".join(problems))
    return Encoded(index, sample_members(key, codec.ext, data, meta), t, src_bytes)


def encode_all(jobs: list, workers: int) -> Iterator[Encoded]:
    """Encode jobs in parallel, yielding results in job order with bounded look-ahead."""
    if workers <= 1:
        yield from map(encode_row, jobs)
        return
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(workers, initializer=one_opencv_thread) as pool:
        # imap keeps order; chunksize 1 keeps long videos from stalling a batch.
        results = pool.imap(encode_row, jobs, chunksize=1)
        for _ in range(len(jobs)):
            try:
                yield results.next(timeout=WORKER_TIMEOUT_S)
            except mp.TimeoutError:
                raise SignstreamError(worker_timeout_message(workers)) from None
        # every result is in: let the idle workers take their stop sentinel and exit, rather than
        # SIGTERM them mid-wait on the task queue (the exit path of ``with``), which can hang
        pool.close()
        pool.join()


# --------------------------------------------------------------------------- shards
class ShardWriter:
    """Groups encoded samples into shards in order and finalises each atomically."""

    def __init__(self, split_dir: Path, split: str, opts: PackOptions, state: dict, slot: Slot | None = None):
        self.dir, self.split, self.opts, self.state = split_dir, split, opts, state
        self.slot = slot or Slot(split_dir.parent, split)
        self.pending: list[Encoded] = []
        self.pending_bytes = 1024  # tar end-of-archive blocks

    def add(self, item: Encoded, next_row: int) -> None:
        size = sum(tar_member_size(len(d)) for _, d in item.members)
        full = len(self.pending) >= self.opts.max_samples
        too_big = self.pending and self.pending_bytes + size > self.opts.max_bytes
        if full or too_big:
            self.flush(next_row=item.index)
        self.pending.append(item)
        self.pending_bytes += size

    def flush(self, next_row: int) -> None:
        """Write the pending samples as the next shard and record it in the state."""
        if not self.pending:
            self.state["next_row"] = next_row
            return
        number = len(self.state["shards"])
        tar = self.dir / self.slot.shard(number)
        # Claim the names first: a kill after the rename but before the shard is
        # recorded must still leave a file the rerun knows it wrote.
        self.state["writing"] = [tar.name, index_path_for(tar).name]
        write_json(self.slot.state, self.state)
        layout = write_tar(tar, ([m for m in item.members] for item in self.pending))
        write_index(index_path_for(tar), layout)
        self.state["shards"].append(
            {
                "file": tar.name,
                "index": index_path_for(tar).name,
                "sha256": sha256_file(tar),
                "samples": len(self.pending),
                "frames": sum(i.frames for i in self.pending),
                "bytes": tar.stat().st_size,
                "keys": [m[0].key for m in layout],
            }
        )
        self.state["png_bytes"] += sum(i.png_bytes for i in self.pending)
        self.state["next_row"] = next_row
        self.state["writing"] = []
        write_json(self.slot.state, self.state)
        self.pending, self.pending_bytes = [], 1024


# ------------------------------------------------------------------------ per split
def fingerprint(rows: list[Row], keys: list[str], opts: PackOptions) -> str:
    """Hash of everything that decides a split's bytes: a resumed run must match the interrupted one.

    Covers the options and, per row, every field written into the sample
    (name, key, signer, gloss, text), its source paths and each source file's
    size and modification time, so an edited table column or a source replaced
    at the same path is noticed instead of answered with the old shards.
    """
    h = hashlib.sha256(json.dumps({"fingerprint": 2, **asdict(opts)}, sort_keys=True).encode())
    for row, key in zip(rows, keys):
        sources = [row.video] if row.video else list(row.frames)
        h.update(
            json.dumps(
                [
                    row.name,
                    key,
                    row.signer,
                    row.gloss,
                    row.text,
                    row.problem,
                    sources,
                    [_source_identity(p) for p in sources],
                ]
            ).encode()
        )
    return h.hexdigest()


def _source_identity(path: str) -> str:
    """Size and modification time of a source file (cheap; a rewrite changes the time)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def pack_split(
    split: str,
    rows: list[Row],
    out: Path,
    opts: PackOptions,
    workers: int,
    overwrite: bool = False,
    progress: bool = True,
    fp: str | None = None,
    keys: list[str] | None = None,
    slot: Slot | None = None,
) -> dict:
    """Pack one split's rows into ``out/<split>``; returns its manifest (``fp``: their fingerprint, if known).

    ``keys``: the rows' sample keys (default: made from these rows); ``slot``: the part of the
    split they are (default: the whole split), whose record is written instead of the manifest.
    """
    slot = slot or Slot(out, split)
    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)
    keys = keys or make_keys(row.name for row in rows)
    fp = fp or fingerprint(rows, keys, opts)
    state = load_state(split_dir, split, fp, overwrite, slot=slot)
    remove_stray_temps(split_dir, slot.owned_here)
    if slot.count:
        remove_stray_temps(slot.part_dir, lambda name: name in (slot.record.name, slot.state.name))
    if state is None:
        print(
            f"{split}{f' part {slot.index}/{slot.count}' if slot.count else ''}: already packed ({slot.record})",
            file=sys.stderr,
        )
        return read_manifest(slot.record).to_dict()
    start = state["next_row"]
    jobs = [(i, rows[i], keys[i], opts) for i in range(start, len(rows))]
    writer = ShardWriter(split_dir, split, opts, state, slot)
    t0, frames = time.perf_counter(), 0
    bar = _progress(split, len(rows), start, progress)
    # closing(): an interrupt (Ctrl-C, SIGTERM, a full disk) stops the worker pool here, at once,
    # not whenever the abandoned generator happens to be collected
    with contextlib.closing(encode_all(jobs, workers)) as results:
        for item in results:
            if item.members is None:
                _warn_skip(split, rows[item.index], item.reason)
                state["skipped"].append(
                    {
                        "name": rows[item.index].name,
                        "row": rows[item.index].row,
                        "table": rows[item.index].table,
                        "reason": item.reason,
                    }
                )
            else:
                writer.add(item, next_row=item.index)
                frames += item.frames
            _tick(bar, frames, t0)
    writer.flush(next_row=len(rows))
    if bar is not None:
        bar.close()
    manifest = build_manifest(split, state, opts)
    if not manifest.shards and not slot.count:
        # Nothing packed: no manifest, so a rerun after fixing the sources starts afresh
        # instead of reporting "already packed" (the warnings above name every row).
        slot.state.unlink(missing_ok=True)
        return manifest.to_dict()
    # Manifest before removing the state: at no moment are written shards unrecorded. A part
    # records even an empty share: the merge waits for every part's record.
    write_manifest(slot.record, manifest)
    slot.state.unlink(missing_ok=True)
    if not slot.count:
        write_json(split_dir / STATS_FILE, _stats(frames, len(jobs), time.perf_counter() - t0, workers))
    return manifest.to_dict()


def _warn_skip(split: str, row: Row, reason: str) -> None:
    print(f"warning: skipped {split} row {row.row} ({row.name}): {reason}", file=sys.stderr)


def _progress(split: str, total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"pack {split}", unit="video", dynamic_ncols=True)


def _tick(bar, frames: int, t0: float) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(f"{frames / max(time.perf_counter() - t0, 1e-9):.0f} frames/s", refresh=False)


def _stats(frames: int, videos: int, seconds: float, workers: int) -> dict:
    return {
        "videos_encoded": videos,
        "frames_encoded": frames,
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 1) if seconds > 0 else None,
        "workers": workers,
        "finished_unix": round(time.time(), 3),
    }


def build_manifest(split: str, state: dict, opts: PackOptions) -> Manifest:
    """The split's manifest: shards, totals, skipped rows, options and versions."""
    codec = enc.CODECS[opts.codec]
    options = {**asdict(opts), "quality": opts.quality if opts.quality is not None else codec.default_quality}
    return Manifest.build(
        split,
        codec.name,
        codec.ext,
        state["fingerprint"],
        options,
        (ShardEntry.from_dict(s) for s in state["shards"]),
        png_bytes=state["png_bytes"],
        skipped=tuple(state["skipped"]),
        versions=_versions(),
    )


def _versions() -> dict:
    import av
    import cv2
    import numpy

    return {
        "signstream": __version__,
        "av": av.__version__,
        "ffmpeg": _ffmpeg_version(),
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
    }


def _ffmpeg_version() -> str:
    import av

    lib = av.library_versions.get("libavcodec")
    return ".".join(map(str, lib)) if lib else "unknown"


# ---------------------------------------------------------------------- whole corpus
def pack_corpus(
    adapter: str,
    out: str | os.PathLike,
    *,
    root=None,
    table=None,
    splits=None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    before_write: Callable[[dict[str, str]], None] | None = None,
    **options,
) -> dict:
    """Pack a whole corpus; returns ``{"splits": {split: manifest}, "vocab": [...]}``.

    Args:
        adapter: a registered corpus layout (:data:`~signstream.loaders.corpora.LAYOUTS`):
            ``phoenix2014``, ``phoenix2014t``, ``csv`` or one a user added.
        out: output directory.
        root: corpus root (layouts that take a root folder).
        table: table file (layouts that take a table file).
        splits: restrict to these splits (default: all in the table).
        workers: encoding processes (default: all cores); output does not depend on it.
        overwrite: replace shards packed with other options.
        progress: show a progress bar.
        before_write: called with each split's fingerprint once every check has
            passed, before anything is written (a destination's own checks).
        **options: fields of :class:`PackOptions`.

    Returns:
        ``vocab`` is the vocabulary in ``glosses.txt`` after the run, or ``None``
        when no vocabulary could be derived (see :func:`write_vocab`).

    Raises:
        SignstreamError: bad root/table, bad options, an output that is not a
            directory, is being written by another run or holds files pack did
            not write, or nothing packed at all.
    """
    opts = PackOptions(**options)
    _check_options(opts)
    if workers is not None and workers < 1:
        raise SignstreamError(f"--workers must be at least 1, got {workers}")
    rows, table_splits = _list_rows(adapter, root, table, splits)
    out = Path(out)
    by_split: dict[str, list[Row]] = {}
    for row in rows:
        by_split.setdefault(row.split, []).append(row)
    _prepare_out(out, list(by_split))
    # One writer per output: the lock comes before the checks read the folder, so a
    # second run started a moment later cannot pass them too.
    with OutputLock(out, key="--out"):
        fps = {}
        for split, split_rows in by_split.items():  # refuse before any split is written
            fps[split] = fingerprint(split_rows, make_keys(r.name for r in split_rows), opts)
            load_state(out / split, split, fps[split], overwrite, apply=False)
        if before_write is not None:
            before_write(fps)
        _make_dirs(out, list(by_split))
        workers = workers or available_cores()
        remove_stray_temps(out, lambda name: name == GLOSSES)
        manifests = {
            s: pack_split(s, r, out, opts, workers, overwrite, progress, fp=fps[s]) for s, r in by_split.items()
        }
        if not any(m["totals"]["samples"] for m in manifests.values()):
            raise SignstreamError(f"nothing packed: all {len(rows)} rows were skipped (see warnings above)")
        vocab = write_vocab(
            out, manifests, by_split, source_splits={"train"} if "train" in table_splits else table_splits
        )
    return {"splits": manifests, "vocab": vocab}


def _prepare_out(out: Path, splits: list[str]) -> None:
    """Refuse an output that cannot hold the shards (nothing is written)."""
    for path in (out, *(out / s for s in splits)):
        if path.exists() and not path.is_dir():
            raise SignstreamError(f"--out: {path} exists and is not a directory")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SignstreamError(f"--out: {parent} is not a writable directory")


def _make_dirs(out: Path, splits: list[str]) -> None:
    try:
        for split in splits:
            (out / split).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SignstreamError(f"--out: cannot create {exc.filename or out}: {exc.strerror}") from None


_SOURCE_METAVAR = {"root": "DIR", "table": "FILE"}


def _list_rows(adapter: str, root, table, splits) -> tuple[list[Row], set[str]]:
    """The rows to pack and the set of splits the whole table has."""
    layout = get_layout(adapter)
    given = {"root": root, "table": table}
    source = given.pop(layout.takes)
    if source is None:
        raise SignstreamError(f"the {adapter} layout needs --{layout.takes} {_SOURCE_METAVAR[layout.takes]}")
    ((other, value),) = given.items()
    if value is not None:  # a source the layout would ignore is a mistake, not a default
        raise SignstreamError(f"the {adapter} layout reads --{layout.takes}, not --{other}")
    rows = layout.read(source)
    table_splits = {r.split for r in rows}
    if splits:
        rows = [r for r in rows if r.split in set(splits)]
    if not rows:
        raise SignstreamError("the corpus table lists no videos" + (f" for splits {splits}" if splits else ""))
    return rows, table_splits


def _check_options(opts: PackOptions) -> None:
    codec = lookup(enc.CODECS, opts.codec, "codec")
    try:
        enc.check_settings(codec, opts.quality, opts.speed, opts.gop)
    except ValueError as exc:
        raise SignstreamError(str(exc)) from None
    if opts.max_samples < 1 or opts.max_bytes < 4096:
        raise SignstreamError("--max-samples must be >= 1 and --max-bytes >= 4096")
    if opts.resize and not 2 <= min(opts.resize) <= max(opts.resize) <= MAX_RESIZE:
        raise SignstreamError(
            f"--resize {opts.resize[0]}x{opts.resize[1]}: each side must be between 2 and {MAX_RESIZE}"
        )


def write_vocab(
    out: Path, manifests: dict, by_split: dict[str, list[Row]], source_splits: set[str] | None = None
) -> list[str] | None:
    """Write ``glosses.txt``, the sorted glosses of the packed train videos.

    Args:
        out: the pack output root.
        manifests: this run's manifests, by split.
        by_split: this run's rows, by split.
        source_splits: the splits the vocabulary comes from: ``{"train"}`` when
            the corpus has one (default), else every split of the corpus table.

    A source split packed in this run contributes its packed rows; one packed
    earlier contributes the glosses in its shards. When a source split is
    neither, an existing ``glosses.txt`` is kept as it is (packing dev alone
    must not shrink the vocabulary), and ``None`` is returned if there is none.
    """
    source_splits = source_splits or {"train"}
    glosses: set[str] = set()
    for split in sorted(source_splits):
        if split in manifests:
            skipped = {k["name"] for k in manifests[split]["skipped"]}
            for row in by_split[split]:
                if row.name not in skipped:
                    glosses.update(row.gloss.split())
            continue
        earlier = _packed_glosses(out / split)
        if earlier is None:
            return _existing_vocab(out / GLOSSES)
        glosses |= earlier
    vocab = sorted(glosses)
    with atomic_write(out / GLOSSES, "w") as f:
        f.write("".join(f"{g}\n" for g in vocab))
    return vocab


def _packed_glosses(split_dir: Path) -> set[str] | None:
    """Glosses of every sample in a complete split's shards (``None`` if it cannot be read)."""
    try:
        manifest = read_record(split_dir / MANIFEST, "manifest")
        if manifest is None:
            return None
        glosses = set()
        for shard in manifest["shards"]:
            for meta in read_json_members(split_dir / shard["file"]):
                glosses.update(str(meta.get("gloss", "")).split())
        return glosses
    except (SignstreamError, OSError, KeyError, TypeError, ValueError, tarfile.TarError) as exc:
        print(f"warning: cannot read the train vocabulary from {split_dir}: {exc}", file=sys.stderr)
        return None


def _existing_vocab(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


# ------------------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 224x224, got {text!r}")
    size = int(m.group(1)), int(m.group(2))
    if not 2 <= min(size) <= max(size) <= MAX_RESIZE:
        raise argparse.ArgumentTypeError(f"each side must be between 2 and {MAX_RESIZE}, got {text!r}")
    return size


def _bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)B?", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 1G, got {text!r}")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(p) -> None:
    """Register ``signstream pack`` options."""
    p.add_argument(
        "adapter",
        metavar="LAYOUT",
        choices=sorted(LAYOUTS),
        help="corpus layout: " + "; ".join(f"{n} ({LAYOUTS[n].description})" for n in sorted(LAYOUTS)),
    )
    for takes, what in (("root", "corpus root directory"), ("table", "corpus table file")):
        names = ", ".join(n for n in sorted(LAYOUTS) if LAYOUTS[n].takes == takes)
        p.add_argument(f"--{takes}", metavar=_SOURCE_METAVAR[takes], help=f"{what} ({names})")
    p.add_argument("--out", required=True, help="output directory, or s3://bucket/prefix (uploaded shard by shard)")
    p.add_argument(
        "--staging",
        help="with --out s3://...: local directory to pack in before upload "
        "(default: under the system temporary directory)",
    )
    p.add_argument("--splits", help="comma-separated splits to pack (default: all)")
    p.add_argument(
        "--codec",
        default="vp9",
        choices=sorted(enc.CODECS),
        help="vp9 (all backends, default), h264 (NVDEC/PyAV only), mjpeg",
    )
    p.add_argument("--quality", type=int, help="CRF for vp9 (default 30) / h264 (18); q-scale for mjpeg (3)")
    p.add_argument("--speed", help="encoder speed: vp9 cpu-used (default 8), h264 preset (veryfast)")
    p.add_argument("--gop", type=_positive_int, help="keyframe interval in frames (default: encoder's)")
    p.add_argument("--resize", type=_size, metavar="HxW", help="resize frames (default: keep size)")
    p.add_argument("--max-samples", type=_positive_int, default=1000, help="videos per shard (default 1000)")
    p.add_argument("--max-bytes", type=_bytes, default=1 << 30, help="bytes per shard, e.g. 512M (default 1G)")
    p.add_argument("--workers", type=_positive_int, help="encoding processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace shards packed with other options")
    many = p.add_mutually_exclusive_group()
    many.add_argument(
        "--part",
        metavar="I/N",
        help="pack only part I of N (1-based) of each split, e.g. on N machines into one shared --out; "
        "'slurm' reads the SLURM job array task; then run --merge",
    )
    many.add_argument(
        "--merge", action="store_true", help="once all N parts are packed: write manifests and vocabulary"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    """Run ``signstream pack``."""
    from functools import partial

    t0 = time.perf_counter()
    packer = pack_corpus
    if (args.part or args.merge) and remote.is_url(args.out):
        raise SignstreamError("--part and --merge write to a directory all parts share, not an s3:// --out")
    if args.part or args.merge:
        from signstream.tools import pack_parts

        packer = (
            pack_parts.merge_parts
            if args.merge
            else partial(pack_parts.pack_part, part=pack_parts.parse_part(args.part))
        )
    elif remote.is_url(args.out):  # pack in a staging directory, upload each finished shard
        from signstream.tools.remote_pack import pack_to_bucket

        packer = partial(pack_to_bucket, staging=args.staging)
    result = packer(
        args.adapter,
        args.out,
        root=args.root,
        table=args.table,
        splits=args.splits.split(",") if args.splits else None,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        codec=args.codec,
        quality=args.quality,
        speed=args.speed,
        gop=args.gop,
        resize=args.resize,
        max_samples=args.max_samples,
        max_bytes=args.max_bytes,
    )
    seconds = time.perf_counter() - t0
    for split, m in result["splits"].items():
        t = m["totals"]
        ratio = t["png_bytes"] / t["bytes"] if t["bytes"] else float("nan")
        print(
            f"{split}: {t['samples']} videos, {t['frames']} frames, {t['shards']} shard(s), "
            f"{t['bytes'] / 1e6:.1f} MB ({ratio:.0f}x smaller than the source), "
            f"{len(m['skipped'])} skipped"
        )
    if "part" in result:
        print(f"part {result['part'][0]}/{result['part'][1]} packed; once every part is, rerun with --merge")
    elif result["vocab"] is None:
        print(f"vocabulary: not written ({GLOSSES} comes from the train split; pack it too) ({seconds:.1f} s)")
    else:
        # a string join, not Path: --out may be an s3:// URL
        print(
            f"vocabulary: {len(result['vocab'])} glosses -> {remote.redact(str(args.out)).rstrip('/')}/{GLOSSES} "
            f"({seconds:.1f} s)"
        )
    return 0
