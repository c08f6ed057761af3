"""Atomic file writes shared by every stage that writes outputs.

A killed job must never leave a file that looks complete but is not: every
writer goes to a temporary name in the same directory and is renamed into
place only after it is flushed and closed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a write failed for want of space: the user can fix and resume


def tmp_name(path: str | os.PathLike) -> Path:
    """Return the temporary sibling name used while ``path`` is being written."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename on success.

    Args:
        path: final destination.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open file object. On an exception the temporary file is removed
        and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL and exc.filename is None:
            # a failed write() names no file: name the output, for the one-line message
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise


def disk_full(exc: BaseException) -> str | None:
    """The one-line message for a full disk or exhausted quota, else ``None``."""
    if not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
        return None
    where = f" while writing {exc.filename}" if exc.filename else ""
    return (f"{exc.strerror or os.strerror(exc.errno)}{where}; free some space, then rerun "
            "the same command to resume")


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
