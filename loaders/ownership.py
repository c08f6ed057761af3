"""One writer per output: a lock in the output folder (or bucket prefix) that names its holder.

A run that writes an output first creates ``.signstream.lock`` there atomically, recording its pid, host, command
and start time; a second writer stops with one line naming the first. The holder removes it on any normal exit
(context manager, and ``atexit``); forked children never remove their parent's lock. A lock whose process on this
host is gone is taken over with a warning; one from another host never is. Why: docs/design/ownership.md
"""

from __future__ import annotations

import abc
import atexit
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from signstream import SignstreamError

LOCK_NAME = ".signstream.lock"
UNREADABLE_GRACE_S = 30.0  # an unreadable lock younger than this may still be being written

_HELD: dict[int, object] = {}  # id -> lock, for the atexit release


class OutputBusy(SignstreamError):
    """The output is being written by another run."""


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, ticks: str | None) -> bool:
    """Whether ``pid`` is a running process of this host, and the one that wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:  # a zombie has exited; only its parent has not reaped it yet
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks


def _redact(text: str) -> str:
    # a command line may carry a URL's password or signed query; the lock is readable by others
    from signstream.loaders.remote import redact

    return redact(text)


def holder_record() -> dict:
    """What a lock says about its holder (this process)."""
    command = _redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python")
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command[:300],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "started_unix": round(time.time(), 3),
        "pid_start": _start_ticks(os.getpid()),
        "token": uuid.uuid4().hex,
    }


def parse_record(data: bytes) -> dict | None:
    """A lock's record, or ``None`` when it is not one (empty, garbled)."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    ok = (
        isinstance(record, dict)
        and isinstance(record.get("pid"), int)
        and record["pid"] > 0
        and isinstance(record.get("token"), str)
    )
    return record if ok else None


def is_stale(record: dict) -> bool:
    """True when the lock names this host and a process that is gone."""
    return record.get("host") == socket.gethostname() and not _alive(record["pid"], record.get("pid_start"))


def busy_message(where: str, record: dict, key: str, lock: str) -> str:
    """The one line a second writer gets."""
    command = str(record.get("command", "?"))
    command = command if len(command) <= 80 else command[:77] + "..."
    return (
        f"{where} is being written by another run (pid {record['pid']} on {record.get('host', '?')} "
        f"since {record.get('started', '?')}: {command}); wait for it to finish or choose another {key} "
        f"(if that run is gone, delete {lock})"
    )


def _warn_takeover(lock: str, record: dict | None) -> None:
    who = (
        f"pid {record['pid']} on {record.get('host')} since {record.get('started', '?')}"
        if record
        else "an unreadable lock"
    )
    print(f"warning: {lock} was left by a run that is gone ({who}); taking it over", file=sys.stderr)


class _Lock(abc.ABC):
    """Shared acquire/release bookkeeping; subclasses say how the lock is stored."""

    where: str
    path: str

    def __init__(self, key: str):
        self.key = key
        self.record: dict | None = None

    def acquire(self):
        """Take the lock; raises :class:`OutputBusy` (one line) when another live run holds it."""
        for _ in range(3):  # a takeover can race another run's: look again, a bounded number of times
            record = holder_record()
            if self._create(json.dumps(record, indent=2).encode() + b"\n"):
                self.record = record
                _HELD[id(self)] = self
                return self
            data, age = self._read()
            if data is None:
                continue  # released in the meantime
            found = parse_record(data)
            if found is not None and found.get("token") == record["token"]:
                self.record = record  # our own create whose answer was lost, then retried
                _HELD[id(self)] = self
                return self
            if found is None and age is not None and age < UNREADABLE_GRACE_S:
                raise OutputBusy(
                    f"{self.where} is being claimed by another run ({self.path} is being "
                    f"written); try again in a minute or choose another {self.key}"
                )
            if found is not None and not is_stale(found):
                raise OutputBusy(busy_message(self.where, found, self.key, self.path))
            _warn_takeover(self.path, found)
            self._remove_if(data)
        raise OutputBusy(
            f"{self.where}: cannot take {self.path} (other runs keep claiming it); choose another {self.key}"
        )

    def release(self) -> None:
        """Remove the lock if this process still holds it (idempotent)."""
        _HELD.pop(id(self), None)
        record, self.record = self.record, None
        if record is None or record["pid"] != os.getpid():
            return
        try:
            data, _ = self._read()
            found = parse_record(data) if data is not None else None
            if found is not None and found.get("token") == record["token"]:
                self._remove_if(data)
        except (SignstreamError, OSError) as exc:  # the run's result stands; the next run sees a stale lock
            print(f"warning: could not remove {self.path}: {exc}", file=sys.stderr)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @abc.abstractmethod
    def _create(self, data: bytes) -> bool:
        """Create the lock with ``data`` atomically; ``False`` when it already exists."""

    @abc.abstractmethod
    def _read(self) -> tuple[bytes | None, float | None]:
        """The lock's bytes and age in seconds (``None`` when absent / unknown)."""

    @abc.abstractmethod
    def _remove_if(self, data: bytes) -> None:
        """Remove the lock, but only while it still holds ``data``."""


class OutputLock(_Lock):
    """The lock of a local output folder (created if missing).

    Args:
        folder: the output folder.
        key: how the user names it (``--out``, ``out``), for messages.
    """

    def __init__(self, folder: str | os.PathLike, key: str = "--out"):
        super().__init__(key)
        self.folder = Path(folder)
        self.where, self.path = str(self.folder), str(self.folder / LOCK_NAME)
        self._made_folder = False

    def acquire(self) -> OutputLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise SignstreamError(f"{self.key}: {self.folder} exists and is not a directory")
        if not self.folder.exists():
            try:
                self.folder.mkdir(parents=True)
                self._made_folder = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise SignstreamError(f"{self.key}: cannot create {self.folder}: {exc.strerror or exc}") from None
        return super().acquire()

    def release(self) -> None:
        super().release()
        if self._made_folder:  # a run refused before writing anything leaves no empty folder
            self._made_folder = False
            try:
                self.folder.rmdir()
            except OSError:
                pass  # not empty: it holds the run's outputs

    def _create(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise SignstreamError(f"{self.key}: cannot create {self.path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> tuple[bytes | None, float | None]:
        try:
            with open(self.path, "rb") as f:
                return f.read(), time.time() - os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None, None

    def _remove_if(self, data: bytes) -> None:
        # Move it aside first: only the file we read goes, never a lock another run just made.
        aside = f"{self.path}.{uuid.uuid4().hex[:8]}.gone"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, "rb") as f:
                moved = f.read()
            if moved != data:  # someone else's fresh lock: put it back unless a new one appeared
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
        finally:
            os.unlink(aside)


class BucketLock(_Lock):
    """The lock of an ``s3://bucket/prefix`` output: an object created only if absent.

    Stale rule: as for a folder (this host, process gone); a lock from another
    host must be deleted by hand, the refusal names the object.
    """

    def __init__(self, url: str, key: str = "--out"):
        super().__init__(key)
        from signstream.loaders import remote

        self._remote = remote
        self.where = url.rstrip("/")
        self.path = f"{self.where}/{LOCK_NAME}"
        self.fs = remote.filesystem(url)

    def _create(self, data: bytes) -> bool:
        def put() -> bool:
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except FileExistsError:  # an answer, not a failure: not to be retried
                return False
            return True

        try:
            return self._remote.with_retries(self.path, put)
        except PermissionError as exc:
            raise SignstreamError(f"{self.key}: cannot write {self.path}: {exc}") from None
        except ConnectionError as exc:
            raise SignstreamError(f"cannot reach {exc}") from None

    def _read(self) -> tuple[bytes | None, float | None]:
        try:
            data = self._remote.with_retries(self.path, lambda: self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None, None
        except ConnectionError as exc:
            raise SignstreamError(f"cannot reach {exc}") from None
        return data, None  # no trusted clock to age it by: an unreadable lock is stale

    def _remove_if(self, data: bytes) -> None:
        # No compare-and-delete in plain S3: read once more right before deleting to
        # narrow the window in which another run's fresh lock could be removed.
        now, _ = self._read()
        if now == data:
            try:
                self._remote.with_retries(self.path, lambda: self.fs.rm_file(self.path))
            except FileNotFoundError:
                pass


def held() -> list:
    """The locks this process holds now."""
    return list(_HELD.values())


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - at exit, a lock we cannot remove is reported by the next run
            pass
