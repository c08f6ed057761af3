"""OpenCV runs on the calling thread wherever work is already split per process or worker."""

from __future__ import annotations

import cv2

from signstream.loaders.cvthreads import one_opencv_thread


def test_one_opencv_thread_leaves_opencv_a_single_thread():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(max(2, before))
        one_opencv_thread()
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
