"""Atomic file writes shared by every stage that writes outputs.

A killed job must never leave a file that looks complete but is not: every
writer goes to a temporary name in the same directory and is renamed into
place only after it is flushed and closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    # mkstemp creates 0600 files; published outputs get the usual umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON atomically (deterministic bytes)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
