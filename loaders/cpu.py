"""The CPUs this process may use, and OpenCV's own thread pool switched off where work is already per core.

Light on purpose (no torch import), so the packer and the synthetic-corpus
writer can use it in their worker processes.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPUs this process may run on (affinity mask, so a SLURM or container limit counts;
    ``os.cpu_count`` where that is unknown). The one core count every default starts from."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
