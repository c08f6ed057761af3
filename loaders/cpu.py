"""The CPUs this process may use, the ranks it shares them with, and fork-safe OpenCV.

No torch import, so pack and synth workers can use it. Importing it registers the fork guard
(:func:`_opencv_quiet_before_fork`); every module that forks imports it, so the guard is in
place before any fork the project makes. Why: docs/design/threads.md
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# A bounded wait for any worker of a pool or a DataLoader: a worker that sends nothing
# for this long is stuck (a lock copied across fork, a dead peer), not slow. The slowest
# honest unit of work is one long video decoded or encoded on one core, well under this.
WORKER_TIMEOUT_S = 600.0


def available_cores() -> int:
    """CPUs this process may run on (affinity mask, so a SLURM or container limit counts;
    ``os.cpu_count`` where that is unknown). The one core count every default starts from."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Environment variables that say how many ranks run on this machine, in order of trust.
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def positive_int(value) -> int | None:
    """``value`` as an int >= 1 (an environment variable's text), else ``None``."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def local_processes(env: Mapping[str, str] | None = None) -> int:
    """Ranks on this machine, from the launcher's environment (1 when not launched).

    Every per-process share of the cores (torch threads, DALI's decoder threads)
    divides by this, so ``accelerate launch`` with 8 ranks on one host does not
    start 8 times what the host has.
    """
    env = os.environ if env is None else env
    for name in LOCAL_SIZE_VARS:
        n = positive_int(env.get(name))
        if n is not None:
            return n
    return 1


def worker_timeout_message(workers: int) -> str:
    """The one line for a pool or DataLoader whose workers stopped answering."""
    return (
        f"no result from {workers} worker process(es) in {WORKER_TIMEOUT_S:.0f} s: a worker is "
        "stuck; rerun, or use 0 workers to see which input it stalls on"
    )


def one_opencv_thread() -> None:
    """Run every OpenCV call on the calling thread (``cv2.setNumThreads(1)``).

    Each place that calls this already runs one decode (or one video encode or
    render) per process or loader worker, about one per core. OpenCV would
    otherwise start a pool of its own inside each of them: nested thread pools
    that outnumber the cores and make every resize and colour conversion slower,
    not faster. Call it once in each worker process (a pool initialiser, a
    DataLoader worker), and in single-threaded measurements.
    """
    import cv2

    cv2.setNumThreads(1)


# The thread count OpenCV had before each fork in progress (forks can nest across threads).
_saved_opencv_threads: list[int] = []


def _opencv_quiet_before_fork() -> None:
    """Park OpenCV's thread pool in the parent just before it forks.

    A child copies the pool's locks and condition variables but none of its
    threads; OpenCV 5.x then deadlocks in the child's first ``setNumThreads``
    or parallel call if the parent's pool had run. Shrinking the parent's pool
    to one thread first makes the copied state an idle, single-threaded pool,
    so the child starts clean whatever the parent did. Only touches OpenCV if
    this process already imported it (never imports it for the sake of a fork).
    """
    cv2 = sys.modules.get("cv2")
    if cv2 is None or not hasattr(cv2, "setNumThreads"):
        return
    _saved_opencv_threads.append(cv2.getNumThreads())
    cv2.setNumThreads(1)


def _opencv_restore_after_fork() -> None:
    """Give the parent back the OpenCV thread count it had before the fork."""
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and _saved_opencv_threads:
        cv2.setNumThreads(_saved_opencv_threads.pop())


def _forget_after_fork() -> None:
    """The child keeps one OpenCV thread (what the parent parked); it restores nothing."""
    _saved_opencv_threads.clear()


if hasattr(os, "register_at_fork"):  # POSIX; spawn-only platforms start children clean
    os.register_at_fork(
        before=_opencv_quiet_before_fork, after_in_parent=_opencv_restore_after_fork, after_in_child=_forget_after_fork
    )
