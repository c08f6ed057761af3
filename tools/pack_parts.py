"""``signstream pack --part I/N`` and ``--merge``: one corpus packed by N machines into one output.

Part I of N (1-based) packs the I-th contiguous block of each split's rows, in table order, with the keys the whole
split gives (so parts agree), into ``<split>-pIIIofNNN-NNNNNN.tar`` shards, resumable like a whole pack; its record
(a manifest of its shards) goes to ``.parts/pIIIofNNN/<split>.json``. Each part is the one writer of its own folder
there, so parts run side by side into one output. ``--merge`` writes each split's ``manifest.json`` (shards in part
order) and ``glosses.txt`` once all N records carry this table's fingerprint, else it names the missing parts.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders import outputs
from signstream.loaders.corpora import Row
from signstream.loaders.cpu import available_cores
from signstream.loaders.format import MANIFEST, Manifest, ShardEntry, make_keys, write_manifest
from signstream.loaders.ownership import LOCK_NAME, OutputBusy, OutputLock, busy_message, is_stale, parse_record
from signstream.tools.pack import (
    PackOptions,
    _check_options,
    _list_rows,
    _make_dirs,
    _prepare_out,
    fingerprint,
    pack_split,
    write_vocab,
)
from signstream.tools.packstate import (
    PARTS_DIR,
    STATE_FILE,
    STATS_FILE,
    Slot,
    is_any_shard_name,
    load_state,
    read_record,
)

MAX_PARTS = 999  # three digits in the shard names
_TAG = re.compile(r"p(\d{3})of(\d{3})")


def parse_part(text: str, env: dict | None = None) -> tuple[int, int]:
    """``I/N`` (parts count from 1: ``1/3`` … ``3/3``), or ``slurm``: this task of a SLURM job array.

    Raises:
        SignstreamError: not ``I/N`` with ``1 <= I <= N <= 999``, or ``slurm`` outside an array task.
    """
    if text.strip().lower() == "slurm":
        return _slurm_part(os.environ if env is None else env)
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m:
        raise SignstreamError(f"--part {text!r}: expected I/N such as 2/3 (parts count from 1), or slurm")
    index, count = int(m[1]), int(m[2])
    if not 1 <= index <= count <= MAX_PARTS:
        raise SignstreamError(f"--part {text}: need 1 <= I <= N <= {MAX_PARTS} (parts count from 1)")
    return index, count


def _slurm_part(env) -> tuple[int, int]:
    """The part of this SLURM array task: ``--array=1-N`` and ``--array=0-(N-1)`` both give 1/N … N/N."""
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT")
    missing = [n for n in names if n not in env]
    if missing:
        raise SignstreamError(f"--part slurm: {missing[0]} is not set (run it as a task of `sbatch --array=1-N`)")
    try:
        task, low, high, count = (int(env[n]) for n in names)
    except ValueError:
        raise SignstreamError(f"--part slurm: {', '.join(names)} must be whole numbers") from None
    if high - low + 1 != count:
        raise SignstreamError(
            f"--part slurm: the array must be a plain range such as --array=1-{count} (got {low}-{high}, {count} tasks)"
        )
    return parse_part(f"{task - low + 1}/{count}")


def part_range(rows: int, index: int, count: int) -> range:
    """The rows of part ``index`` of ``count``: a contiguous block in table order (sizes differ by at most 1)."""
    return range(rows * (index - 1) // count, rows * index // count)


def part_fingerprint(whole: str, index: int, count: int) -> str:
    """A part's fingerprint: the whole split's (rows, keys, options, sources) and which part it is."""
    return hashlib.sha256(f"{whole} part {index}/{count}".encode()).hexdigest()


def _rows_by_split(adapter: str, root, table, splits) -> tuple[dict[str, list[Row]], set[str]]:
    rows, table_splits = _list_rows(adapter, root, table, splits)
    by_split: dict[str, list[Row]] = {}
    for row in rows:
        by_split.setdefault(row.split, []).append(row)
    return by_split, table_splits


def _whole_fingerprint(rows: list[Row], opts: PackOptions) -> tuple[list[str], str]:
    keys = make_keys(r.name for r in rows)  # from the whole split: every part gives a row the same key
    return keys, fingerprint(rows, keys, opts)


def _merged_already(split_dir: Path, whole: str) -> dict | None:
    manifest = read_record(split_dir / MANIFEST, "manifest")
    return manifest if manifest is not None and manifest["fingerprint"] == whole else None


def _refuse_if_held(folder: Path, key: str) -> None:
    """Stop when a live run holds ``folder``'s lock (a bounded look; nothing is taken)."""
    try:
        data = (folder / LOCK_NAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return
    record = parse_record(data)
    if record is not None and not is_stale(record):
        raise OutputBusy(busy_message(str(folder), record, key, str(folder / LOCK_NAME)))


def pack_part(
    adapter: str,
    out: str | os.PathLike,
    *,
    part: tuple[int, int],
    root=None,
    table=None,
    splits=None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> dict:
    """Pack part ``part = (I, N)`` of every split into ``out``; returns ``{"splits": {split: part record}}``.

    Arguments are :func:`~signstream.tools.pack.pack_corpus`'s. Splits already merged with
    the same fingerprint are left as they are. Two runs of the same part refuse each other;
    other parts, and nothing else, may write ``out`` at the same time.

    Raises:
        SignstreamError: what ``pack_corpus`` raises, a merge or whole pack writing ``out``
            now, or another run of this part.
    """
    index, count = part
    opts = PackOptions(**options)
    _check_options(opts)
    if workers is not None and workers < 1:
        raise SignstreamError(f"--workers must be at least 1, got {workers}")
    by_split, _ = _rows_by_split(adapter, root, table, splits)
    out = Path(out)
    _prepare_out(out, list(by_split))
    try:
        with OutputLock(Slot(out, "", index, count).part_dir, key="--part"):
            _refuse_if_held(out, "--out")  # a merge or whole pack owns the output now
            plans = {}
            for split, rows in by_split.items():  # every split is checked before any is written
                keys, whole = _whole_fingerprint(rows, opts)
                if _merged_already(out / split, whole):
                    print(f"{split}: already merged ({out / split / MANIFEST})", file=sys.stderr)
                    continue
                slot, share = Slot(out, split, index, count), part_range(len(rows), index, count)
                fp = part_fingerprint(whole, index, count)
                load_state(out / split, split, fp, overwrite, apply=False, slot=slot)
                plans[split] = (slot, [rows[i] for i in share], keys[share.start : share.stop], fp)
            _make_dirs(out, list(plans))
            workers = workers or available_cores()
            records = {
                split: pack_split(split, r, out, opts, workers, overwrite, progress, fp=fp, keys=k, slot=slot)
                for split, (slot, r, k, fp) in plans.items()
            }
    finally:
        outputs.prune_empty([out / PARTS_DIR])  # a part refused before writing leaves no empty folder
    return {"splits": records, "vocab": None, "part": (index, count)}


def _part_records(out: Path, split: str, whole: str) -> tuple[list[tuple[Path, dict]], list[str]]:
    """The part records of ``split`` that match ``whole``, in part order, and the parts still missing."""
    found: dict[int, dict[int, tuple[Path, dict]]] = {}  # count -> index -> record
    stale: list[str] = []
    folders = sorted((out / PARTS_DIR).iterdir()) if (out / PARTS_DIR).is_dir() else []
    for folder in folders:
        m = _TAG.fullmatch(folder.name)
        record = read_record(folder / f"{split}.json", "manifest") if m else None
        if record is None:
            continue
        index, count = int(m[1]), int(m[2])
        if record["fingerprint"] == part_fingerprint(whole, index, count):
            found.setdefault(count, {})[index] = (folder / f"{split}.json", record)
        else:
            stale.append(f"{split} {index}/{count} (packed from other rows or options)")
    if len(found) > 1:
        raise SignstreamError(
            f"{out / PARTS_DIR}: {split} was packed both as {' and as '.join(map(str, sorted(found)))} parts "
            "with these options; move away the part folders of the split you do not want"
        )
    if not found:
        return [], stale or [f"{split} (no part packed yet)"]
    ((count, by_index),) = found.items()
    stale = [s for s in stale if s.split(" ")[1].endswith(f"/{count}")]
    gaps = [f"{split} {i}/{count}" for i in range(1, count + 1) if i not in by_index]
    gaps = [next((s for s in stale if s.startswith(g + " ")), g) for g in gaps]
    return [by_index[i] for i in sorted(by_index)], gaps


def _merged_manifest(out: Path, split: str, whole: str, records: list[tuple[Path, dict]]) -> Manifest:
    """One manifest for the split: the parts' shards in part order, their totals and skipped rows summed."""
    shards, seen = [], set()
    for path, record in records:
        for entry in record["shards"]:
            tar = out / split / entry["file"]
            if not (
                tar.is_file() and tar.stat().st_size == entry["bytes"] and (out / split / entry["index"]).is_file()
            ):
                raise SignstreamError(f"{tar}: missing or changed since {path} recorded it; rerun that part")
            shards.append(ShardEntry.from_dict(entry))
            dup = seen.intersection(entry["keys"])
            if dup:  # keys come from the whole split, so this means records of different tables
                raise SignstreamError(f"{path}: sample key {sorted(dup)[0]!r} is also in an earlier part")
            seen.update(entry["keys"])
    first = records[0][1]
    return Manifest.build(
        split,
        first["codec"],
        first["video_ext"],
        whole,
        first["options"],
        shards,
        png_bytes=sum(r["totals"]["png_bytes"] for _, r in records),
        skipped=tuple(s for _, r in records for s in r["skipped"]),
        versions=first["versions"],
    )


def merge_parts(
    adapter: str,
    out: str | os.PathLike,
    *,
    root=None,
    table=None,
    splits=None,
    overwrite: bool = False,
    **options,
) -> dict:
    """Merge the finished parts in ``out`` into each split's manifest and ``glosses.txt``.

    Args are :func:`~signstream.tools.pack.pack_corpus`'s (the same table and options the
    parts were packed with; ``workers`` and ``progress`` are accepted and unused).

    Returns:
        What ``pack_corpus`` returns.

    Raises:
        SignstreamError: one line naming every missing part, a part packed from other rows
            or options, a recorded shard that is gone, a split merged or packed earlier from
            other rows or options (without ``overwrite``), or another run writing ``out``.
    """
    for unused in ("workers", "progress"):
        options.pop(unused, None)
    opts = PackOptions(**options)
    _check_options(opts)
    by_split, table_splits = _rows_by_split(adapter, root, table, splits)
    out = Path(out)
    _prepare_out(out, list(by_split))
    with OutputLock(out, key="--out"):
        plans, done, missing = {}, {}, []
        for split, rows in by_split.items():  # everything is checked before anything is written
            whole = _whole_fingerprint(rows, opts)[1]
            earlier = _merged_already(out / split, whole)
            if earlier is not None:
                done[split] = earlier
                continue
            records, gaps = _part_records(out, split, whole)
            missing += gaps
            plans[split] = (whole, records)
        if missing:
            raise SignstreamError(
                f"cannot merge yet: part(s) not packed: {', '.join(missing)}; pack each with --part I/N "
                "(same table and options), then run --merge again"
            )
        for folder in sorted((out / PARTS_DIR).glob("p*of*")):
            _refuse_if_held(folder, "--part")  # a rerun of a finished part would replace its shards
        manifests = {split: _merged_manifest(out, split, *plan) for split, plan in plans.items()}
        replaced = {split: _earlier_names(out / split, overwrite) for split in plans}
        for split, manifest in manifests.items():
            _publish(out / split, manifest, replaced[split])
        results = {**{s: m.to_dict() for s, m in manifests.items()}, **done}
        if not any(m["totals"]["samples"] for m in results.values()):
            raise SignstreamError("nothing packed: every row of every part was skipped (see the parts' warnings)")
        vocab = write_vocab(
            out, results, by_split, source_splits={"train"} if "train" in table_splits else table_splits
        )
        for _, records in plans.values():  # the manifests hold everything the records did
            outputs.remove_owned(out / PARTS_DIR, [path for path, _ in records])
        outputs.prune_empty([out / PARTS_DIR])
    return {"splits": {split: results[split] for split in by_split}, "vocab": vocab}


def _earlier_names(split_dir: Path, overwrite: bool) -> list[Path]:
    """What an earlier pack of other rows or options left in the split (replaced only with ``overwrite``)."""
    manifest = read_record(split_dir / MANIFEST, "manifest")
    state = read_record(split_dir / STATE_FILE, "state")
    if manifest is None and state is None:
        return []
    if not overwrite:
        what = "shards packed" if manifest is not None else "an unfinished pack"
        raise SignstreamError(f"{split_dir} holds {what} from other rows or options; pass --overwrite to replace them")
    names = {
        n
        for record in (manifest, state)
        for s in (record or {}).get("shards", [])
        if isinstance(s, dict)
        for n in (s.get("file"), s.get("index"))
        if isinstance(n, str) and is_any_shard_name(split_dir.name, n)
    }
    return [split_dir / n for n in sorted(names)] + [split_dir / f for f in (MANIFEST, STATE_FILE, STATS_FILE)]


def _publish(split_dir: Path, manifest: Manifest, replaced: list[Path]) -> None:
    """Write the merged manifest, then remove what an earlier pack left that it does not list."""
    if not manifest.shards:
        print(f"warning: {split_dir.name}: every row was skipped; no manifest written", file=sys.stderr)
    else:
        write_manifest(split_dir / MANIFEST, manifest)
    listed = {n for s in manifest.shards for n in (s.file, s.index)} | ({MANIFEST} if manifest.shards else set())
    outputs.remove_owned(split_dir, [p for p in replaced if p.name not in listed])
