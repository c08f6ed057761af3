"""Shards on a web server or in an S3 bucket: ``http(s)://host/path`` and ``s3://bucket/prefix``.

Accepted wherever a shard directory is; small files are fetched, tars are streamed (one GET per run
of needed bytes, :class:`SpanStream`), never copied. Invariants: nothing hangs (every request has
timeouts, a deadline and bounded tries, and a host that keeps failing is marked down, probed now and
then), an unfetchable sample is skipped by name, and every shown location passes :func:`redact`.
Why: docs/design/remote.md
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from signstream import SignstreamError
from signstream.loaders.format import MANIFEST

SCHEMES = ("http", "https", "s3")
TRIP_AFTER = 8  # failed requests in a row before a host is treated as down
PROBE_EVERY_S = 30.0  # while down: seconds between real tries
READAHEAD = 8 << 20  # bytes fetched at once while samples are read in file order
MAX_GAP = 4096  # a read starting this close after the previous one counts as sequential
T = TypeVar("T")


def is_url(spec: Any) -> bool:
    """True for an ``http(s)://`` or ``s3://`` URL (or a :class:`RemotePath`)."""
    if isinstance(spec, RemotePath):
        return True
    if not isinstance(spec, str):
        return False
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def is_remote(spec: Any) -> bool:
    """True when ``spec`` (a URL, a list of them, or a path-like) names remote shards."""
    if isinstance(spec, (list, tuple)):
        return bool(spec) and all(is_url(s) for s in spec)
    return is_url(spec)


# The password of a URL's user info (all of it when there is no ``:``, since a lone
# user name is often a token), and query values whose names say they are secrets
# (S3/GCS presigned URLs, Azure SAS ``sig``, ``token``, ``api_key``, ...).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s@]*(?:@[^/?#\s@]*)*)@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&#\s]*?(?:token|sig|signature|secret|password|passwd|pwd|key|credential|auth)"
    r"[^=&#\s]*=)[^&#\s'\"]*",
    re.IGNORECASE,
)
REDACTED = "***"


def redact(value: Any) -> Any:
    """``value`` with every URL's secrets replaced by ``***``: for messages, logs and written files.

    Works on free text (each URL inside it), a :class:`RemotePath`, and lists,
    tuples and dicts of those (recursively); anything else is returned as it is.
    ``http://user:pw@host/p?X-Amz-Signature=abc`` becomes
    ``http://user:***@host/p?X-Amz-Signature=***``: host and path stay, so the
    text still says where. Connections use the real URL, never this one.
    """
    if isinstance(value, RemotePath):
        value = value.url
    if isinstance(value, str):
        if "://" not in value and "=" not in value:
            return value
        text = _USERINFO.sub(_hide_password, value)
        return _SECRET_QUERY.sub(lambda m: m.group("name") + REDACTED, text)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _hide_password(m: re.Match) -> str:
    user, sep, _ = m.group("userinfo").partition(":")
    return m.group("scheme") + (f"{user}:{REDACTED}@" if sep else f"{REDACTED}@")


def location(spec: str | os.PathLike) -> Any:
    """A :class:`RemotePath` for a URL, else a :class:`pathlib.Path` (what recipes join with ``/``)."""
    from pathlib import Path

    return RemotePath(str(spec)) if is_url(spec) else Path(spec)


# ---------------------------------------------------------------------- settings
def timeout_s() -> float:
    """Connect/read timeout of one request (``SIGNSTREAM_REMOTE_TIMEOUT``, default 20 s)."""
    return float(os.environ.get("SIGNSTREAM_REMOTE_TIMEOUT", "20"))


def deadline_s() -> float:
    """Longest one request may take, start to end: three times :func:`timeout_s`.

    The connect and read timeouts bound each network wait; this bounds the
    whole call as well, so a request that stops making progress for any other
    reason (an event loop or resolver that never answers) fails and is retried
    like a timeout instead of waiting forever.
    """
    return 3.0 * timeout_s()


def attempts() -> int:
    """Tries per request (``SIGNSTREAM_REMOTE_ATTEMPTS``, default 3)."""
    return max(1, int(os.environ.get("SIGNSTREAM_REMOTE_ATTEMPTS", "3")))


def _reset_fsspec_after_fork() -> None:
    """In a forked child (a DataLoader worker): drop fsspec locks and state the parent's
    I/O thread may have held at the fork.

    fsspec resets its event loop in a forked child itself, but not the lock that
    guards creating one (its reset names the wrong variable) nor the lock and
    task set of its deferred session closing. A child that inherits one of them
    held would wait on it forever at its first request.
    """
    import sys
    import threading

    asyn = sys.modules.get("fsspec.asyn")
    if asyn is None:
        return
    if hasattr(asyn, "_lock"):
        asyn._lock = None
    if hasattr(asyn, "_deferred_close_lock"):
        asyn._deferred_close_lock = threading.Lock()
    if hasattr(asyn, "_deferred_close_tasks"):
        asyn._deferred_close_tasks = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_fsspec_after_fork)


def filesystem(url: str):
    """The fsspec filesystem for a URL's scheme, with this module's timeouts.

    fsspec caches instances per process (and drops them in a forked worker),
    so this is cheap to call per request.
    """
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    t = timeout_s()
    if scheme == "s3":
        try:
            import s3fs  # noqa: F401
        except ImportError:
            raise SignstreamError("s3:// shards need the s3fs package (pip install s3fs)") from None
        # botocore reads AWS_ENDPOINT_URL itself; naming it here also keys fsspec's
        # instance cache, so a changed endpoint gets a new client.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # Our own bounded retry loop wraps every call; botocore's retries stay at one try.
        return fsspec.filesystem(
            "s3",
            client_kwargs={"endpoint_url": endpoint} if endpoint else {},
            config_kwargs={"connect_timeout": t, "read_timeout": t, "retries": {"max_attempts": 1}},
        )
    import aiohttp

    return fsspec.filesystem(
        scheme, client_kwargs={"timeout": aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t)}
    )


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exceptions worth another try: network errors and timeouts of either client.

    Also what a streamed read (:func:`stream_members`) raises when the server
    drops the connection or answers with an error status mid-way.
    """
    kinds: list[type[BaseException]] = [OSError, asyncio.TimeoutError, EOFError]
    try:
        import aiohttp

        kinds.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        kinds.append(botocore.exceptions.BotoCoreError)
    except ImportError:
        pass
    return tuple(kinds)


class ShortRead(OSError):
    """A response with fewer bytes than asked for (a dropped connection): tried again."""


class RangeIgnored(ConnectionError):
    """The server answered a range request with the whole object: not tried again."""


class _Host:
    """Failures in a row to one host, in this process (see the module doc)."""

    def __init__(self) -> None:
        self.failures, self.last_try = 0, 0.0

    def down(self) -> bool:
        return self.failures >= TRIP_AFTER and time.monotonic() - self.last_try < PROBE_EVERY_S


_HOSTS: dict[str, _Host] = {}


def _host_of(what: str) -> str:
    rest = what.split("://", 1)[-1]
    return what.split("://", 1)[0] + "://" + rest.split("/", 1)[0] if "://" in what else rest


def with_retries(what: str, call: Callable[[], T]) -> T:
    """Run ``call`` with bounded retries; missing objects and exhausted tries raise.

    ``what`` is the URL (first) and what is being read, for messages.

    Raises:
        FileNotFoundError: the object does not exist (not retried).
        ConnectionError: every try failed (or the host is down, see the module
            doc); the message names ``what`` and the last error.
    """
    transient = transient_errors()
    host = _HOSTS.setdefault(_host_of(what), _Host())
    if host.down():
        raise ConnectionError(
            f"{redact(what)}: host unreachable ({host.failures} failed requests in a row; "
            f"next try within {PROBE_EVERY_S:.0f} s)"
        )
    tries = 1 if host.failures >= TRIP_AFTER else attempts()
    for attempt in range(tries):
        host.last_try = time.monotonic()
        try:
            result = call()
        except (FileNotFoundError, PermissionError, RangeIgnored):
            host.failures = 0  # the server answered
            raise
        except transient as exc:
            last = exc
            if attempt + 1 < tries:
                time.sleep(0.25 * 2**attempt)
            continue
        host.failures = 0
        return result
    host.failures += 1
    reason = redact(f"{type(last).__name__}: {last}".strip().splitlines()[0][:200])
    raise ConnectionError(f"{redact(what)}: {reason} (after {tries} tries)")


# ----------------------------------------------------------------------- objects
@dataclass(frozen=True)
class RemotePath:
    """A remote object or prefix, joined with ``/`` like a :class:`pathlib.Path`."""

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, part: str | os.PathLike) -> RemotePath:
        return RemotePath(f"{self.url}/{os.fspath(part).strip('/')}")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.url.rsplit("/", 1)[0])

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name else ""

    def with_suffix(self, suffix: str) -> RemotePath:
        stem = self.url[: len(self.url) - len(self.suffix)] if self.suffix else self.url
        return RemotePath(stem + suffix)

    def exists(self) -> bool:
        """True when the object exists; an unreachable server is a one-line error."""
        fs = filesystem(self.url)
        try:
            try:
                info = with_retries(str(self), lambda: fs.info(self.url, timeout=deadline_s()))
                return info.get("type") != "directory"
            except FileNotFoundError:
                if self.url.startswith("s3://"):
                    return False
                # fsspec's HTTP info() reports any failure, a timeout too, as "not found":
                # one ranged GET tells a missing object from an unreachable server.
                with_retries(str(self), lambda: fs.cat_file(self.url, start=0, end=1, timeout=deadline_s()))
                return True
        except FileNotFoundError:
            return False
        except ConnectionError as exc:
            raise SignstreamError(f"cannot reach {exc}") from None

    is_file = exists

    def read_bytes(self) -> bytes:
        """The whole object (a small file: manifest, index, vocabulary)."""
        fs = filesystem(self.url)
        try:
            return with_retries(str(self), lambda: fs.cat_file(self.url, timeout=deadline_s()))
        except FileNotFoundError:
            raise SignstreamError(f"not found: {redact(self)}") from None
        except ConnectionError as exc:
            raise SignstreamError(f"cannot fetch {exc}") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def glob(self, pattern: str) -> list[RemotePath]:
        """Objects under this prefix matching ``pattern`` (S3 listing; HTTP index pages)."""
        fs = filesystem(self.url)
        scheme = self.url.split("://", 1)[0]
        try:
            found = with_retries(str(self), lambda: fs.glob(f"{self.url}/{pattern}", timeout=deadline_s()))
        except (FileNotFoundError, ConnectionError):
            return []
        return sorted(RemotePath(p if "://" in p else f"{scheme}://{p}") for p in found)

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url


def fetch_range(url: str, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of an object, retried; a short answer counts as a failure."""
    fs = filesystem(url)

    def call() -> bytes:
        data = fs.cat_file(url, start=start, end=stop, timeout=deadline_s())
        if len(data) > stop - start:
            raise RangeIgnored(
                f"{redact(url)}: asked for {stop - start} bytes, got {len(data)}: "
                "the server does not honour HTTP Range requests"
            )
        if len(data) < stop - start:
            raise ShortRead(f"got {len(data)} of {stop - start} bytes")
        return data

    return with_retries(f"{url} bytes {start}-{stop}", call)


class RangeReader:
    """Reads spans of one remote tar by range, for reads out of any order (``verify``, a resume point).

    Each call not served from the last block is one :class:`SpanStream`; while the reads are
    sequential it fetches :data:`READAHEAD` bytes at once and serves the following spans from them.
    """

    def __init__(self, path: RemotePath, size: int | None = None):
        self.url, self.size = path.url, size
        self._start, self._data, self._last_end = 0, b"", -1

    def read(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)``; raises ``ConnectionError`` / ``FileNotFoundError``."""
        end = self._start + len(self._data)
        if self._start <= start and stop <= end:
            data = self._data[start - self._start : stop - self._start]
        else:
            sequential = 0 <= start - self._last_end <= MAX_GAP
            fetch_to = max(stop, start + READAHEAD) if sequential else stop
            if self.size is not None:
                fetch_to = max(stop, min(fetch_to, self.size))
            with SpanStream(self.url, start, fetch_to) as span:
                block = span.read(fetch_to - start)
            self._start, self._data = start, block
            data = block[: stop - start]
        self._last_end = stop
        return data


# ------------------------------------------------------------------ streamed spans
STREAM_CHUNK = 1 << 20  # bytes taken from a response at a time
S3_BLOCK = 16 << 20  # bytes per ranged GET when streaming from S3
_NO_RANGE: set[str] = set()  # hosts seen answering a range request with the whole object


def honours_range(url: str) -> bool:
    """False once the host of ``url`` has answered a range request with the whole object."""
    return _host_of(url) not in _NO_RANGE


class SpanStream:
    """Bytes ``[start, stop)`` of one object as one streamed GET (``Range: bytes=start-stop-1``), front to back.

    Memory stays at what the caller asks for. A connection dropped mid-way is reopened at the first
    byte not yet read (bounded tries, :func:`with_retries`). A server that ignores ``Range`` is
    remembered per host and streamed from byte 0, the bytes before ``start`` read through. S3 is
    read in :data:`S3_BLOCK` ranged GETs. ``requests`` counts the GETs made.
    """

    def __init__(self, url: str, start: int, stop: int):
        self.url, self.pos, self.stop = url, start, stop
        self.requests, self._body = 0, None

    def __enter__(self) -> SpanStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the connection (the rest of the response is not read)."""
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes; raises ``ConnectionError`` / ``FileNotFoundError`` naming the bytes."""
        return self._pull(n, keep=True)

    def skip(self, n: int) -> None:
        """Read through (and drop) the next ``n`` bytes."""
        if n > 0:
            self._pull(n, keep=False)

    def _pull(self, n: int, keep: bool) -> bytes:
        if self.pos + n > self.stop:
            raise ValueError(f"read past the end of the span ({self.pos}+{n} > {self.stop})")
        parts: list[bytes] = []
        left = n

        def call() -> None:
            nonlocal left
            try:
                if self._body is None:
                    self._open()
                while left:
                    chunk = self._body.read(min(left, STREAM_CHUNK))
                    if not chunk:
                        raise ShortRead(f"response ended {left} bytes early")
                    left -= len(chunk)
                    self.pos += len(chunk)
                    if keep:
                        parts.append(chunk)
            except BaseException:
                self.close()  # the next try opens a new request at self.pos
                raise

        with_retries(f"{self.url} bytes {self.pos}-{self.pos + n}", call)
        return b"".join(parts)

    def _open(self) -> None:
        self.requests += 1
        if self.url.split("://", 1)[0].lower() not in ("http", "https"):
            self._body = _BlockBody(self.url, self.pos, self.stop)
            return
        fs = filesystem(self.url)
        ranged = honours_range(self.url)
        headers = {"Range": f"bytes={self.pos}-{self.stop - 1}"} if ranged else {}
        body = fs.open(self.url, "rb", block_size=0, size=self.stop, headers=headers)
        self._body = _TimedBody(body)
        status = getattr(getattr(body, "r", None), "status", 206)
        if status == 200 and self.pos > 0:
            if ranged:
                _NO_RANGE.add(_host_of(self.url))
            self._body = _Discard(self._body, self.pos)


class _TimedBody:
    """A streamed HTTP response whose every read has the request deadline."""

    def __init__(self, f) -> None:
        self.f = f

    def read(self, n: int) -> bytes:
        return self.f.read(n, timeout=deadline_s())

    def close(self) -> None:
        self.f.close()


class _Discard:
    """A body whose first ``skip`` bytes are read through and dropped (a server that ignores ``Range``)."""

    def __init__(self, body, skip: int) -> None:
        self.body, self.left = body, skip

    def read(self, n: int) -> bytes:
        while self.left:
            chunk = self.body.read(min(self.left, STREAM_CHUNK))
            if not chunk:
                raise ShortRead("response ended before the wanted bytes")
            self.left -= len(chunk)
        return self.body.read(n)

    def close(self) -> None:
        self.body.close()


class _BlockBody:
    """An object read in :data:`S3_BLOCK` ranged GETs (stores that always honour ``Range``)."""

    def __init__(self, url: str, start: int, stop: int) -> None:
        self.url, self.pos, self.stop, self.data = url, start, stop, memoryview(b"")

    def read(self, n: int) -> bytes:
        if not self.data and self.pos < self.stop:
            end = min(self.stop, self.pos + S3_BLOCK)
            block = filesystem(self.url).cat_file(self.url, start=self.pos, end=end, timeout=deadline_s())
            if len(block) != end - self.pos:
                raise ShortRead(f"got {len(block)} of {end - self.pos} bytes")
            self.data, self.pos = memoryview(block), end
        out, self.data = bytes(self.data[:n]), self.data[n:]
        return out

    def close(self) -> None:
        self.data = memoryview(b"")


# ------------------------------------------------------------------ streamed tars
class _HashingReader:
    """A read-only stream that hashes what passes through it (for tarfile's stream mode)."""

    def __init__(self, raw):
        self.raw, self.sha = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def open_stream(path: RemotePath):
    """A sequential read stream of a remote object (large blocks, no local copy)."""
    fs = filesystem(path.url)
    return fs.open(path.url, "rb", block_size=READAHEAD, cache_type="readahead")


def stream_members(path: RemotePath, *, with_data: bool = False) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Yield each regular member of a remote tar (and its bytes) in one streamed pass."""
    with open_stream(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for info in tar:
            if not info.isreg():
                continue
            data = tar.extractfile(info).read() if with_data else None
            yield info, data


def stream_digest_and_members(path: RemotePath) -> tuple[str, list[tarfile.TarInfo], str | None]:
    """SHA-256, regular members and read error (``None`` if none) of a remote tar, in one pass."""
    with open_stream(path) as raw:
        hashing = _HashingReader(raw)
        members, error = [], None
        try:
            with tarfile.open(fileobj=hashing, mode="r|") as tar:
                members = [info for info in tar if info.isreg()]
        except (tarfile.TarError, *transient_errors()) as exc:
            error = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(*transient_errors()):
            hashing.drain()
        return hashing.sha.hexdigest(), members, error


# --------------------------------------------------------------------- resolving
def paths_of(spec: Any, expand: Callable[[str], list[str]]) -> tuple[list[RemotePath], str] | RemotePath:
    """Tar URLs for a remote spec, or the manifest URL to read instead.

    The same rules as for local paths: a list of tar URLs, a brace pattern, a
    ``manifest.json`` URL, a single ``.tar`` URL, or a split "directory" (its
    ``manifest.json``, else the ``*.tar`` objects a listing shows).
    """
    if isinstance(spec, (list, tuple)):
        urls = [RemotePath(u) for item in spec for u in expand(str(item))]
        return urls, f"{len(urls)} shard URLs"
    text = str(spec)
    if "{" in text:
        return [RemotePath(u) for u in expand(text)], text
    path = RemotePath(text)
    if path.suffix == ".json":
        if not path.exists():
            raise SignstreamError(f"manifest not found: {redact(path)}")
        return path
    if path.suffix == ".tar":
        return [path], text
    manifest = path / MANIFEST
    if manifest.exists():
        return manifest
    tars = path.glob("*.tar")
    if not tars:
        raise SignstreamError(f"empty split: no manifest.json and no .tar shards at {redact(path)}")
    return tars, text


# --------------------------------------------------------------- small files, local use
def copy_file(src: Any, dst: str | os.PathLike) -> None:
    """Copy a local or remote file to local ``dst``, atomically (temp file + rename)."""
    from signstream.loaders.fileio import atomic_write

    data = src.read_bytes() if isinstance(src, RemotePath) else Path(src).read_bytes()
    with atomic_write(dst, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def local_copy(src: Any) -> Iterator[Any]:
    """A local path holding ``src``: itself when local, else a temporary copy (removed after)."""
    if not isinstance(src, RemotePath):
        yield src
        return
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="signstream-") as tmp:
        dst = Path(tmp) / src.name
        copy_file(src, dst)
        yield dst
