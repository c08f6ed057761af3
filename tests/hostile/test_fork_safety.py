"""Forks after OpenCV ran in the parent: loaders with workers, pack and synth pools never hang.

OpenCV 5.x deadlocks in a forked child whose parent had used OpenCV's thread
pool (the pool's locks are copied, its threads are not). Each case runs in a
child interpreter with a deadline, so a regression fails here instead of
holding the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.hostile

DEADLINE_S = 120


def run_script(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, or a failure naming a hang."""
    # its own session, so a hang is ended with every worker it forked, not just the parent
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: no exit within {DEADLINE_S} s")
    assert proc.returncode == 0, err[-2000:]
    return out


def test_loader_with_workers_after_opencv_ran_in_the_main_process(packed):
    """A dev loader after a training epoch: main-process decoding first, then workers, twice."""
    out = run_script(f"""
        from signstream.loaders.api import make_loader
        from signstream.loaders.transform import Transform
        for workers in (0, 2, 2):  # 224x224 from 48x64 keeps OpenCV's pool busy in the parent
            loader = make_loader({str(packed / "train")!r}, backend="pyav", batch_size=2,
                                 num_workers=workers, transform=Transform(size=224))
            print(workers, sum(len(b.keys) for b in loader))
        """)
    assert out.split() == ["0", "6", "2", "6", "2", "6"]


def test_pool_forked_after_heavy_opencv_use_runs_opencv_in_its_workers():
    out = run_script("""
        import multiprocessing as mp
        import cv2
        import numpy as np
        from signstream.loaders.cpu import one_opencv_thread

        image = np.random.rand(480, 640, 3).astype(np.float32)
        for _ in range(50):
            cv2.resize(image, (1024, 1024))
        threads_before = cv2.getNumThreads()

        def work(i):
            return cv2.resize(image, (224, 224)).shape[0] + i

        with mp.get_context("fork").Pool(2, initializer=one_opencv_thread) as pool:
            print(sum(pool.map(work, range(8))))
        print(cv2.getNumThreads() == threads_before)
        """)
    assert out.split() == [str(224 * 8 + 28), "True"]


def test_synth_and_pack_pools_after_opencv_in_the_parent(tmp_path):
    """The corpus writer's and the packer's forked pools, started after the parent resized frames."""
    out = run_script(f"""
        import cv2
        import numpy as np
        from signstream.tools.synth import make_corpus
        from signstream.tools.pack import pack_corpus

        image = np.random.rand(480, 640, 3).astype(np.float32)
        for _ in range(50):
            cv2.resize(image, (1024, 1024))
        root = make_corpus({str(tmp_path / "synth")!r}, layout="phoenix2014", seed=0, train=4,
                           dev=2, test=2, vocab=6, height=48, width=64, workers=2)
        pack_corpus("phoenix2014", {str(tmp_path / "packed")!r}, root=root, workers=2, progress=False)
        print("packed")
        """)
    assert out.split()[-1] == "packed"
    assert (tmp_path / "packed" / "train" / "manifest.json").is_file()


def test_a_stuck_worker_is_one_line_after_the_deadline(packed, monkeypatch):
    """A worker that never answers ends the epoch with one line, not a wait forever."""
    import time

    from signstream import SignstreamError
    from signstream.loaders import pyav_backend, stages
    from signstream.loaders.api import make_loader

    monkeypatch.setattr(stages, "WORKER_TIMEOUT_S", 2.0)
    monkeypatch.setattr(
        pyav_backend.PyAVStream, "pipeline", lambda self, reader, worker, workers: iter([time.sleep(60)])
    )
    loader = make_loader(packed / "train", backend="pyav", batch_size=2, num_workers=1)
    t0 = time.monotonic()
    with pytest.raises(SignstreamError, match="no result from 1 worker process"):
        list(loader)
    assert time.monotonic() - t0 < 30
