"""Which shards and samples a loader reads: resolve, validate, split, read.

``resolve_shards`` turns a split directory, a manifest, a brace pattern, a list of tars or an ``http(s)://`` /
``s3://`` URL into a :class:`ShardSet`: every shard with the byte offsets of every sample (from the DALI index
beside it, else a scan of the tar). Problems the user can fix are one-line :class:`SignstreamError` s naming the
file. Ranks split work by DALI's rule (:func:`rank_range`), so the PyAV and DALI backends hand the same samples to
the same rank. Why: docs/design/loaders.md
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signstream import SignstreamError
from signstream.loaders import remote
from signstream.loaders.format import (
    EXT_CODEC,
    MANIFEST,
    MAX_JSON_BYTES,
    VIDEO_EXTS,
    Manifest,
    Member,
    MetaError,
    read_index,
    read_layout,
    read_manifest,
    read_sample_meta,
)

log = logging.getLogger("signstream.loaders")

SKIP_GAP = 2 << 20  # unneeded bytes read through rather than opening a new request (when Range works)
PREFETCH_BYTES = 32 << 20  # fetched sample bytes held ahead of the reader, per reader
LOOKAHEAD = 4096  # upcoming samples looked at to find where one request should end


class SampleError(Exception):
    """A sample that cannot be read or decoded (skipped and counted, not fatal)."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members live inside its shard."""

    shard: int
    key: str
    video_ext: str
    video: tuple[int, int]
    meta: tuple[int, int] | None


@dataclass
class Shard:
    """One tar file, its index file (``None`` if it had none) and its samples in order.

    ``path`` is a :class:`~signstream.loaders.remote.RemotePath` for shards behind a URL.
    """

    path: Path | remote.RemotePath
    index_path: Path | remote.RemotePath | None
    samples: list[SampleRef] = field(default_factory=list)


@dataclass
class ShardSet:
    """The resolved input of a loader."""

    shards: list[Shard]
    origin: str
    manifest: Manifest | None = None

    @property
    def refs(self) -> list[SampleRef]:
        """Every sample, shard by shard, in file order."""
        return [ref for shard in self.shards for ref in shard.samples]

    @property
    def num_samples(self) -> int:
        return sum(len(s.samples) for s in self.shards)

    @property
    def video_exts(self) -> set[str]:
        return {ref.video_ext for shard in self.shards for ref in shard.samples}

    @property
    def codecs(self) -> set[str]:
        """Codecs of the videos: from the manifest, else guessed from the extensions."""
        if self.manifest is not None:
            return {self.manifest.codec}
        return {EXT_CODEC.get(ext, ext) for ext in self.video_exts}

    def shard_of(self, ref: SampleRef) -> str:
        """The shard file name of a sample (for messages and stats)."""
        return self.shards[ref.shard].path.name


# ------------------------------------------------------------------- layouts
def scan_layout(path: Path) -> list[list[Member]]:
    """Lay out a tar without an index file by scanning it (:func:`format.read_layout`).

    A tar cut short (a killed copy, a full disk) keeps every sample whose
    header was read: the members before the cut are intact, and the one the
    cut runs through is listed with its full recorded size, so reading it
    fails as a truncated member that the loaders skip and name. Only a file
    that is not a tar at all is an error. A remote tar is streamed once.
    """
    try:
        if remote.is_url(path):
            with remote.open_stream(path) as raw:
                layout, error = read_layout(path, fileobj=raw)
        else:
            layout, error = read_layout(path)
    except OSError as exc:
        raise SignstreamError(f"cannot read shard {path}: {exc}") from None
    if error is not None:
        if not layout:
            raise SignstreamError(f"cannot read shard {path}: {error}")
        log.warning(
            "shard %s ends early (%s): reading the %d samples before the cut",
            remote.redact(path),
            remote.redact(error),
            len(layout),
        )
    return layout


def _shard_from_layout(number: int, path: Path, index_path: Path | None, layout: list[list[Member]]) -> Shard:
    shard = Shard(path, index_path)
    for members in layout:
        key = members[0].key
        video = [m for m in members if m.ext in VIDEO_EXTS]
        meta = [(m.offset, m.size) for m in members if m.ext == "json"]
        if not video:
            raise SignstreamError(f"sample {key} in {path} has no video member ({'/'.join(VIDEO_EXTS)})")
        first = video[0]
        shard.samples.append(SampleRef(number, key, first.ext, (first.offset, first.size), meta[0] if meta else None))
    return shard


def load_shard(number: int, path: Path, index_path: Path | None = None) -> Shard:
    """Check a shard exists and read its sample layout (index file, else a tar scan)."""
    if not path.is_file():
        raise SignstreamError(f"shard file not found: {path}")
    index_path = index_path or path.with_suffix(".idx")
    if index_path.is_file():
        return _shard_from_layout(number, path, index_path, read_index(index_path))
    return _shard_from_layout(number, path, None, scan_layout(path))


# -------------------------------------------------------------------- resolve
def _expand(pattern: str) -> list[str]:
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _from_manifest(path: Path) -> ShardSet:
    manifest = read_manifest(path)
    if not manifest.shards:
        raise SignstreamError(f"empty split: {path} lists no shards")
    shards = []
    for i, entry in enumerate(manifest.shards):
        shard = load_shard(i, path.parent / entry.file, path.parent / entry.index)
        if entry.samples != len(shard.samples):
            raise SignstreamError(
                f"{shard.index_path or shard.path} lists {len(shard.samples)} samples, {path} says {entry.samples}"
            )
        shards.append(shard)
    return ShardSet(shards, str(path), manifest)


def _paths_of(spec: Any) -> tuple[list[Path], str] | Path:
    """Tar paths for a spec, or the manifest path to read instead."""
    if isinstance(spec, (list, tuple)):
        paths = [Path(p) for item in spec for p in _expand(os.fspath(item))]
        return paths, f"{len(paths)} shard paths"
    if remote.is_remote(spec):
        return remote.paths_of(spec, _expand)
    text = os.fspath(spec)
    if "{" in text:
        return [Path(p) for p in _expand(text)], text
    path = Path(text)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return path / MANIFEST
        tars = sorted(path.glob("*.tar"))
        if not tars:
            raise SignstreamError(f"empty split: no {MANIFEST} and no .tar shards in {path}")
        return tars, text
    if path.suffix == ".json":
        if not path.is_file():
            raise SignstreamError(f"manifest not found: {path}")
        return path
    return [path], text


def resolve_shards(spec: Any) -> ShardSet:
    """Resolve a split directory, manifest, brace pattern or list of tars.

    Raises:
        SignstreamError: missing shard or manifest, empty split, malformed or
            inconsistent index, duplicate sample keys.
    """
    if isinstance(spec, ShardSet):
        return spec
    found = _paths_of(spec)
    if isinstance(found, (Path, remote.RemotePath)):
        shardset = _from_manifest(found)
    else:
        paths, origin = found
        if not paths:
            raise SignstreamError(f"empty split: {origin} names no shards")
        shardset = ShardSet([load_shard(i, p) for i, p in enumerate(paths)], origin)
    if shardset.num_samples == 0:
        raise SignstreamError(f"empty split: {shardset.origin} holds no samples")
    seen: dict[str, str] = {}
    for shard in shardset.shards:
        for ref in shard.samples:
            if ref.key in seen:
                raise SignstreamError(f"duplicate sample key {ref.key} in {seen[ref.key]} and {shard.path}")
            seen[ref.key] = str(shard.path)
    return shardset


# ------------------------------------------------------------------ splitting
def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous share ``[start, stop)`` of ``n`` items for ``rank`` of ``world`` (DALI's rule)."""
    return n * rank // world, n * (rank + 1) // world


# -------------------------------------------------------------------- reading
class SampleReader:
    """Reads samples by offset, keeping at most one shard file open at a time.

    Memory does not grow with the number of shards: a file is closed as soon
    as the stream moves on to the next shard.
    """

    def __init__(self, shardset: ShardSet):
        self.shardset = shardset
        self._number: int | None = None
        self._file = None
        self._ranges: remote.RangeReader | None = None
        self._ready: tuple[SampleRef, Any] | None = None  # the next sample's bytes, fetched by :meth:`stream`

    @property
    def streams(self) -> bool:
        """True when the shards are behind URLs: an epoch is then read through :meth:`stream`."""
        return any(remote.is_url(s.path) for s in self.shardset.shards)

    def stream(self, src: Iterator[tuple[SampleRef, int]]) -> Iterator[tuple[SampleRef, int]]:
        """Stage: ``(ref, pass)`` items unchanged while one background thread fetches their bytes ahead.

        Over URLs each shard, or each run of needed samples in it, is one streamed request
        (:class:`~signstream.loaders.remote.SpanStream`), at most :data:`PREFETCH_BYTES` held; the
        next :meth:`read` of the item just yielded takes its bytes from there. Local shards pass through.
        """
        if not self.streams:
            yield from src
            return
        fetcher = _Fetcher(self.shardset, iter(src))
        fetcher.start()
        try:
            while (got := fetcher.take()) is not None:
                item, result = got
                self._ready = (item[0], result)
                yield item
        finally:
            self._ready = None
            fetcher.stop()

    def _read_remote(self, ref: SampleRef) -> tuple[bytes, bytes | None]:
        """Both members of a sample behind a URL in one range request (they are adjacent)."""
        if self._ranges is None or self._number != ref.shard:
            shard = self.shardset.shards[ref.shard]
            self.close()
            limit = max(sum(span) for r in shard.samples for span in (r.video, r.meta) if span)
            self._ranges, self._number = remote.RangeReader(shard.path, limit), ref.shard
        spans = [ref.video] + ([ref.meta] if ref.meta is not None else [])
        lo, hi = min(s[0] for s in spans), max(s[0] + s[1] for s in spans)
        try:
            block = self._ranges.read(lo, hi)
        except (ConnectionError, FileNotFoundError) as exc:
            raise SampleError(f"cannot fetch: {exc}") from None
        cut = [block[s[0] - lo : s[0] - lo + s[1]] for s in spans]
        return cut[0], (cut[1] if ref.meta is not None else None)

    def _open(self, number: int):
        if number != self._number:
            self.close()
            try:
                self._file = open(self.shardset.shards[number].path, "rb")  # noqa: SIM115 - kept open across reads
            except OSError as exc:
                # deleted or replaced since the loader was built: this sample is skipped and named,
                # and the next one tries again (the file may be back, e.g. a repack finished)
                raise SampleError(
                    f"cannot open the shard any more ({exc.strerror or exc}); "
                    "was it deleted or repacked while the loader ran?"
                ) from None
            self._number = number
        return self._file

    def _read(self, number: int, span: tuple[int, int], what: str, ref: SampleRef) -> bytes:
        f = self._open(number)
        try:
            f.seek(span[0])
            # the size comes from an index or tar header: never ask for more than the file holds
            data = f.read(max(0, min(span[1], os.fstat(f.fileno()).st_size - span[0])))
        except OSError as exc:
            raise SampleError(f"cannot read {what} member: {exc.strerror or exc}") from None
        if len(data) != span[1]:
            raise SampleError(f"{what} member truncated: {len(data)} of {span[1]} bytes")
        return data

    def read(self, ref: SampleRef) -> tuple[bytes, dict[str, Any], int]:
        """Return ``(video bytes, metadata, bytes read)``; raise :class:`SampleError` if unreadable.

        The metadata passed the format's strict reader (:func:`format.read_sample_meta`).
        """
        if ref.meta is not None and ref.meta[1] > MAX_JSON_BYTES:  # checked before reading it
            raise SampleError(
                f"JSON member is {ref.meta[1]} bytes, over the {MAX_JSON_BYTES} a sample's metadata may hold"
            )
        if self._ready is not None and self._ready[0] is ref:
            result, self._ready = self._ready[1], None
            if isinstance(result, SampleError):
                raise result
            video, raw = result
        elif remote.is_url(self.shardset.shards[ref.shard].path):
            video, raw = self._read_remote(ref)
        else:
            video = self._read(ref.shard, ref.video, ref.video_ext, ref)
            raw = self._read(ref.shard, ref.meta, "json", ref) if ref.meta is not None else None
        meta: dict[str, Any] = {"key": ref.key}
        nbytes = len(video)
        if raw is not None:
            nbytes += len(raw)
            meta = parse_meta(raw, ref.key, len(video))
        return video, meta, nbytes

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._number, self._ranges = None, None, None

    def __enter__(self) -> SampleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _span(ref: SampleRef) -> tuple[int, int]:
    """Bytes ``[lo, hi)`` holding a sample's members (adjacent in the tar)."""
    spans = [ref.video] + ([ref.meta] if ref.meta is not None else [])
    return min(s[0] for s in spans), max(s[0] + s[1] for s in spans)


def _cut(ref: SampleRef, lo: int, block: bytes) -> tuple[bytes, bytes | None]:
    video = block[ref.video[0] - lo : ref.video[0] - lo + ref.video[1]]
    return video, (block[ref.meta[0] - lo : ref.meta[0] - lo + ref.meta[1]] if ref.meta is not None else None)


class _Fetcher(threading.Thread):
    """Fetches the bytes of upcoming samples in order, one streamed request per run of needed samples.

    Every wait is bounded: the consumer gives up after :func:`_stall_s` without a sample, each
    request has the remote timeouts, and a stopped fetcher ends at its next step.
    """

    def __init__(self, shardset: ShardSet, src: Iterator[tuple[SampleRef, int]]):
        super().__init__(daemon=True, name="signstream-fetch")
        self.shardset, self.src = shardset, src
        self.ahead: collections.deque = collections.deque()  # items looked at, not fetched yet
        self.ready: collections.deque = collections.deque()  # (item, bytes or SampleError)
        self.cond = threading.Condition()
        self.held, self.done, self.stopped, self.error = 0, False, False, None
        self.waiting = False  # the consumer is waiting on an empty queue
        self.span: remote.SpanStream | None = None
        self.span_shard = -1

    def run(self) -> None:
        try:
            while not self.stopped and (item := self._next()) is not None:
                if item[1] > 0:  # a training replay (a skip's stand-in): fetched only once wanted
                    self._wait_for_demand()
                result = self._fetch(item[0])
                size = 0 if isinstance(result, SampleError) else sum(len(b) for b in result if b)
                with self.cond:
                    while self.ready and self.held + size > PREFETCH_BYTES and not self.stopped:
                        self.cond.wait(0.5)
                    self.ready.append((item, result))
                    self.held += size
                    self.cond.notify_all()
        except Exception as exc:  # handed to the consumer, raised there
            self.error = exc
        finally:
            if self.span is not None:
                self.span.close()
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def _wait_for_demand(self) -> None:
        with self.cond:
            while not (self.waiting and not self.ready) and not self.stopped:
                self.cond.wait(0.5)

    def take(self) -> tuple[tuple[SampleRef, int], Any] | None:
        """The next item and its bytes (or :class:`SampleError`); ``None`` at the end."""
        limit = time.monotonic() + _stall_s()
        with self.cond:
            while not self.ready and not self.done:
                self.waiting = True
                self.cond.notify_all()
                if time.monotonic() > limit:
                    raise SignstreamError(
                        f"no sample arrived from {remote.redact(self.shardset.origin)} in {_stall_s():.0f} s"
                    )
                self.cond.wait(0.5)
            self.waiting = False
            if not self.ready:
                if self.error is not None:
                    raise self.error
                return None
            item, result = self.ready.popleft()
            self.held -= 0 if isinstance(result, SampleError) else sum(len(b) for b in result if b)
            self.cond.notify_all()
            return item, result

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.join(timeout=5)

    def _next(self) -> tuple[SampleRef, int] | None:
        if self.ahead:
            return self.ahead.popleft()
        return next(self.src, None)

    def _fetch(self, ref: SampleRef) -> tuple[bytes, bytes | None] | SampleError:
        lo, hi = _span(ref)
        span = self.span
        gap = SKIP_GAP if remote.honours_range(self.shardset.shards[ref.shard].path.url) else 1 << 62
        if span is None or self.span_shard != ref.shard or not (0 <= lo - span.pos <= gap and hi <= span.stop):
            if span is not None:
                span.close()
            url = self.shardset.shards[ref.shard].path.url
            self.span, self.span_shard = remote.SpanStream(url, lo, self._run_end(ref, hi, gap)), ref.shard
        try:
            self.span.skip(lo - self.span.pos)
            return _cut(ref, lo, self.span.read(hi - lo))
        except (ConnectionError, FileNotFoundError) as exc:
            self.span.close()
            self.span = None  # the next sample opens a new request at its own offset
            return SampleError(f"cannot fetch: {exc}")

    def _run_end(self, ref: SampleRef, end: int, gap: int) -> int:
        """Where the run of upcoming samples in ``ref``'s shard, each close after the last, ends."""
        i = 0
        while True:
            if i == len(self.ahead):
                if len(self.ahead) >= LOOKAHEAD or (item := next(self.src, None)) is None:
                    return end
                self.ahead.append(item)
            nxt = self.ahead[i][0]
            lo, hi = _span(nxt)
            if nxt.shard != ref.shard or not 0 <= lo - end <= gap:
                return end
            end, i = hi, i + 1


def _stall_s() -> float:
    """Longest wait for the next fetched sample: every try of one request, and then some."""
    return 2.0 * remote.attempts() * remote.deadline_s() + 10.0


def parse_meta(raw: bytes, key: str, video_bytes: int | None = None) -> dict[str, Any]:
    """A sample's JSON member through the format's strict reader; a bad one is a :class:`SampleError`."""
    try:
        return read_sample_meta(raw, key, video_bytes)
    except MetaError as exc:
        raise SampleError(str(exc)) from None
