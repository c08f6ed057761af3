"""Atomic file writes shared by every stage that writes outputs.

A killed job must never leave a file that looks complete but is not: every
writer goes to a temporary ``.<name>.<random>.tmp`` in the same directory, and
that is fsynced, renamed into place, and the directory fsynced (:func:`atomic_write`
for file objects, :func:`atomic_save` for libraries that want a path).
:class:`BackgroundWriter` runs such writes on one thread behind the caller, in order.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from signstream import SignstreamError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a write failed for want of space: the user can fix and resume
# A bounded wait for background writes: one write is one output file or two, fsynced, which takes
# seconds at worst, even on a busy network file system; this long without one finishing is a stuck disk.
WRITE_TIMEOUT_S = 600.0


def tmp_name(path: str | os.PathLike) -> Path:
    """Return the temporary sibling name used while ``path`` is being written."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp")


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[tuple[int, str]]:
    """A temporary sibling of ``path`` (fd, name), published on success and removed on any exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself reaches the disk: no empty name after a power cut
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL and exc.filename is None:
            # a failed write() names no file: name the output, for the one-line message
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory; the rename still stands
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; fsync and rename on success.

    Args:
        path: final destination.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open file object. On an exception the temporary file is removed
        and ``path`` is left untouched.
    """
    with _staged(Path(path)) as (fd, _), os.fdopen(fd, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_save(path: str | os.PathLike, save: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically with a writer that takes a file name.

    Args:
        path: final destination.
        save: ``save(tmp)`` writes the whole file at ``tmp`` (a temporary sibling
            of ``path``); if it raises, ``path`` is left untouched and ``tmp`` removed.
    """
    with _staged(Path(path)) as (fd, tmp):
        os.close(fd)
        save(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder under ``folder`` to disk (for files another library wrote in place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a ``{name: tensor}`` dict as a safetensors file, atomically (see :func:`atomic_save`)."""
    from safetensors.torch import save_file

    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def torch_save_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path``, atomically (see :func:`atomic_write`)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def disk_full(exc: BaseException) -> str | None:
    """The one-line message for a full disk or exhausted quota, else ``None``."""
    if not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
        return None
    where = f" while writing {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or os.strerror(exc.errno)}{where}; free some space, then rerun the same command to resume"


def _umask() -> int:
    # mkstemp creates 0600 files; published outputs get the usual umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by ``None``: JSON has no spelling for them.

    Python's ``json`` would write bare ``NaN``/``Infinity``, which other
    JSON readers (``jq``, browsers, most languages) refuse.
    """
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted, strictly valid JSON atomically (deterministic bytes).

    A NaN/inf value is written as ``null`` (see :func:`strict_json`).
    """
    with atomic_write(path, "w") as f:
        json.dump(strict_json(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


class BackgroundWriter:
    """Runs writes on one thread, in the order submitted, at most ``max_pending`` behind the caller.

    The caller computes its next item while the previous ones are written (and
    fsynced). A write that raises stops the writer: the writes queued after it
    never start, so what reaches the disk is a prefix of what was submitted, each
    file whole (every write is atomic on its own), and the exception is raised in
    the caller, unchanged, by its next :meth:`submit` or by :meth:`close`. Every
    wait is bounded by ``timeout_s``.

    Used as a context manager, leaving the block waits for the pending writes,
    after an exception too: they are finished items, and keeping them is what
    lets a rerun skip them. The block's own exception is the one that propagates.

    Args:
        max_pending: writes that may wait in the queue (one more is being written);
            bounds the memory held by items not yet on disk.
        timeout_s: how long a full queue or :meth:`close` waits for writes to finish.
        name: the thread's name, for debuggers and stack dumps.
    """

    def __init__(self, max_pending: int = 2, timeout_s: float = WRITE_TIMEOUT_S, name: str = "writer"):
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        self.timeout_s = timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._current = ""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"signstream-{name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self._finish()
        except SignstreamError as stuck:  # the block's exception stays the one the user sees
            print(f"warning: {stuck}", file=sys.stderr)

    def submit(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``; waits while ``max_pending`` writes are queued.

        Args:
            label: what the write produces (a path), named if it gets stuck.
            fn, args, kwargs: the write; the arguments must not change after this call.

        Raises:
            BaseException: the exception an earlier write raised, as it was raised.
            SignstreamError: no write finished within ``timeout_s``.
        """
        self._raise_error()
        if self._closed:
            raise RuntimeError("submit() after close()")
        try:
            self._queue.put((label, fn, args, kwargs), timeout=self.timeout_s)
        except queue.Full:
            self._raise_error()
            raise SignstreamError(self._stuck_message()) from None

    def close(self) -> None:
        """Wait for every pending write and stop the thread.

        Raises:
            BaseException: the exception a write raised, as it was raised.
            SignstreamError: the writes did not finish within ``timeout_s``.
        """
        self._finish()
        self._raise_error()

    def _finish(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        if not self._closed:
            self._closed = True
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=self.timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            raise SignstreamError(self._stuck_message())

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            label, fn, args, kwargs = item
            del item  # hold no finished item's data while waiting for the next
            if self._error is None:  # after a failure the rest are dropped, never started
                self._current = label
                try:
                    fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
                    self._error = exc
            del label, fn, args, kwargs
            self._current = ""
            if self._closed and self._queue.empty():
                return  # closed while the queue was full, so no end marker may come: end once unstuck

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stuck_message(self) -> str:
        return (
            f"no background write finished in {self.timeout_s:.0f} s (writing {self._current or '?'}): "
            "the disk or file system stopped answering; check it, then rerun the same command to resume"
        )
