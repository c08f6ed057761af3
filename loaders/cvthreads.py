"""OpenCV's own thread pool, switched off where the work is already spread over cores."""

from __future__ import annotations


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
