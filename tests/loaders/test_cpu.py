"""OpenCV runs on the calling thread wherever work is already split per process or worker."""

from __future__ import annotations

import cv2

from signstream.loaders.cpu import available_cores, one_opencv_thread


def test_one_opencv_thread_leaves_opencv_a_single_thread():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(max(2, before))
        one_opencv_thread()
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_available_cores_follows_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert available_cores() == 3
    from signstream.loaders.base import default_workers

    assert default_workers() == 3
