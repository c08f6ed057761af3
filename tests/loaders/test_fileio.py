"""Tests for ``loaders/fileio.py``'s background writer: order, a bounded queue, errors raised
in the caller, and a thread that is always joined."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from signstream import SignstreamError
from signstream.loaders.fileio import BackgroundWriter


def _blocked_writer(max_pending: int = 2, timeout_s: float = 30.0):
    """A writer whose first write waits for ``release``; returns it once that write has started."""
    started, release = threading.Event(), threading.Event()

    def first():
        started.set()
        assert release.wait(30)

    writer = BackgroundWriter(max_pending=max_pending, timeout_s=timeout_s)
    writer.submit("first", first)
    assert started.wait(5)
    return writer, release


def test_writes_run_one_at_a_time_in_the_order_submitted(tmp_path):
    done, threads = [], set()

    def write(i):
        time.sleep(0.002 * (i % 3))  # uneven durations: order must not follow them
        (tmp_path / f"{i}.txt").write_text(str(i))
        done.append(i)
        threads.add(threading.current_thread().name)

    with BackgroundWriter(max_pending=3) as writer:
        for i in range(20):
            writer.submit(f"{i}.txt", write, i)
    assert done == list(range(20))
    assert len(threads) == 1 and threading.current_thread().name not in threads
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.txt" for i in range(20))


def test_a_full_queue_blocks_the_producer_until_a_write_finishes():
    writer, release = _blocked_writer(max_pending=2)
    writer.submit("a", lambda: None)
    writer.submit("b", lambda: None)  # the queue is full now: one write running, two waiting
    returned = threading.Event()
    producer = threading.Thread(target=lambda: (writer.submit("c", lambda: None), returned.set()))
    producer.start()
    assert not returned.wait(0.3), "submit returned while max_pending writes were waiting"
    release.set()
    assert returned.wait(5)
    producer.join(5)
    writer.close()


def test_a_write_error_is_raised_unchanged_in_the_caller_by_the_next_submit_and_later_writes_never_start():
    full = OSError(errno.ENOSPC, "No space left on device", "train/v1.npy")
    ran, release = [], threading.Event()

    def fail():
        assert release.wait(5)
        raise full

    writer = BackgroundWriter(max_pending=2)
    writer.submit("v1", fail)
    writer.submit("v2", ran.append, "v2")  # queued behind the failure
    release.set()
    deadline = time.monotonic() + 5
    with pytest.raises(OSError) as caught:
        while time.monotonic() < deadline:
            writer.submit("v3", ran.append, "v3")
            time.sleep(0.01)
    assert caught.value is full
    with pytest.raises(OSError):
        writer.close()
    assert ran == [] and not writer._thread.is_alive()


def test_close_raises_the_error_of_the_last_write():
    writer = BackgroundWriter()
    writer.submit("last", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.close()
    assert not writer._thread.is_alive()


def test_leaving_the_block_on_ctrl_c_finishes_the_pending_writes_and_joins_the_thread():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter(max_pending=2) as writer:
            for i in range(3):
                writer.submit(str(i), lambda i=i: (time.sleep(0.05), done.append(i)))
            raise KeyboardInterrupt
    assert done == [0, 1, 2]
    assert not writer._thread.is_alive()


def test_the_blocks_own_exception_is_the_one_that_propagates_when_a_write_failed_too():
    with pytest.raises(KeyError):
        with BackgroundWriter() as writer:
            writer.submit("bad", lambda: 1 / 0)
            time.sleep(0.05)
            raise KeyError("the caller's own failure")
    assert not writer._thread.is_alive()


def test_a_stuck_write_is_one_line_naming_it_after_the_deadline():
    writer, release = _blocked_writer(max_pending=1, timeout_s=0.3)
    writer.submit("queued", lambda: None)
    t0 = time.monotonic()
    with pytest.raises(SignstreamError) as caught:
        writer.submit("train/v9.npy", lambda: None)  # the queue never frees
    assert "writing first" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(SignstreamError, match="no background write finished in 0 s"):
        writer.close()
    assert time.monotonic() - t0 < 5
    release.set()
    writer._thread.join(5)
    assert not writer._thread.is_alive()


def test_a_stuck_write_after_an_exception_is_a_warning_and_the_exception_propagates(capsys):
    writer, release = _blocked_writer(max_pending=1, timeout_s=0.2)
    with pytest.raises(KeyboardInterrupt):
        with writer:
            raise KeyboardInterrupt
    assert "warning: no background write finished" in capsys.readouterr().err
    release.set()
    writer._thread.join(5)
