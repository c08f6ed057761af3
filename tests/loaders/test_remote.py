"""Shards behind real HTTP and S3 servers on 127.0.0.1 load exactly like local ones,
and missing objects, dropped connections and silent servers fail by name, quickly."""

from __future__ import annotations

import shutil
import socket
import time

import pytest
import torch

from signstream import SignstreamError
from signstream.benchmarks.servers import http_server
from signstream.loaders import Transform, make_loader
from signstream.loaders.remote import RemotePath, is_remote, is_url
from signstream.loaders.shards import resolve_shards
from tests.remote_fixtures import FAST_FAILURE

T32 = Transform(size=32)


def clips(source, backend="pyav", **kw):
    """``{key: video[:, :length]}`` of every sample, and the loader's stats."""
    kw.setdefault("num_workers", 0)
    loader = make_loader(source, backend=backend, transform=T32, batch_size=2, rank=0, world_size=1, **kw)
    out = {k: v[:, : int(n)].clone() for b in loader for k, v, n in zip(b.keys, b.video, b.lengths)}
    return out, loader.stats


def assert_same(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_urls_are_told_apart_from_local_paths():
    assert is_url("s3://b/p") and is_url("HTTPS://h/x") and is_url(RemotePath("http://h/a"))
    assert not is_url("shards/dev") and not is_url("file.tar") and not is_url(None)
    assert is_remote(["http://h/a.tar", "http://h/b.tar"]) and not is_remote(["http://h/a.tar", "b.tar"])
    p = RemotePath("s3://bucket/packed/") / "dev" / "dev-000001.tar"
    assert str(p) == "s3://bucket/packed/dev/dev-000001.tar" and p.name == "dev-000001.tar"
    assert str(p.with_suffix(".idx")) == "s3://bucket/packed/dev/dev-000001.idx" and p.parent.name == "dev"


def test_http_split_gives_the_same_samples_and_tensors_as_local_disk(packed, http_packed):
    local, _ = clips(packed / "dev")
    served, stats = clips(f"{http_packed}/dev", num_workers=1)
    assert_same(local, served)
    assert not stats.skipped and stats.bytes_read > 0
    assert resolve_shards(f"{http_packed}/dev").origin.endswith("/dev/manifest.json")


def test_s3_split_gives_the_same_samples_and_tensors_as_local_disk(packed, s3_packed):
    local, _ = clips(packed / "train")
    remote, stats = clips(f"{s3_packed}/train", num_workers=2)
    assert_same(local, remote)
    assert not stats.skipped


def test_s3_tars_without_a_manifest_are_listed_and_read(packed, s3_packed):
    local, _ = clips(sorted((packed / "train").glob("*.tar")))
    listed, _ = clips(f"{s3_packed}/train/train-{{000000..000001}}.tar")
    assert_same(local, listed)


def test_dali_reads_s3_with_the_same_samples_as_local(packed, s3_packed):
    pytest.importorskip("nvidia.dali")
    local, _ = clips(packed / "dev", backend="dali", num_workers=1)
    remote, stats = clips(f"{s3_packed}/dev", backend="dali", num_workers=1)
    assert_same(local, remote)
    assert not stats.skipped


def test_dali_reads_http_with_the_same_samples_and_tensors_as_local(packed, http_packed):
    # DALI is fed by the shared sample reader, so any URL PyAV reads, DALI reads too
    pytest.importorskip("nvidia.dali")
    local, _ = clips(packed / "dev", backend="dali", num_workers=1)
    served, stats = clips(f"{http_packed}/dev", backend="dali", num_workers=1)
    assert_same(local, served)
    assert not stats.skipped and stats.bytes_read > 0


def test_http_tars_without_an_index_are_streamed_once_and_laid_out_like_local(packed, tmp_path, monkeypatch):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    shutil.copytree(packed / "dev", tmp_path / "dev")
    for idx in (tmp_path / "dev").glob("*.idx"):
        idx.unlink()
    (tmp_path / "dev" / "manifest.json").unlink()
    local = resolve_shards(packed / "dev")
    with http_server(tmp_path) as base:
        served = resolve_shards(f"{base}/dev/dev-{{000000..{len(local.shards) - 1:06d}}}.tar")
        got, stats = clips(served)
    assert all(s.index_path is None for s in served.shards)
    assert [(r.key, r.video, r.meta) for r in served.refs] == [(r.key, r.video, r.meta) for r in local.refs]
    assert sorted(got) == sorted(r.key for r in local.refs) and not stats.skipped


def test_a_shard_missing_from_the_server_is_a_one_line_error(packed, tmp_path, monkeypatch):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    shutil.copytree(packed / "dev", tmp_path / "dev")
    (tmp_path / "dev" / "dev-000000.tar").unlink()
    with http_server(tmp_path) as base:
        with pytest.raises(SignstreamError, match="shard file not found: .*dev-000000.tar"):
            resolve_shards(f"{base}/dev")
        with pytest.raises(SignstreamError, match="empty split"):
            resolve_shards(f"{base}/nothing-here")


def test_a_shard_deleted_after_start_skips_its_samples_by_name(packed, tmp_path, monkeypatch):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    shutil.copytree(packed / "train", tmp_path / "train")
    with http_server(tmp_path) as base:
        shardset = resolve_shards(f"{base}/train")
        gone = shardset.shards[1]
        (tmp_path / "train" / gone.path.name).unlink()
        got, stats = clips(shardset)
    lost = {r.key for r in gone.samples}
    assert set(got) == {r.key for r in shardset.refs} - lost
    assert {s.key for s in stats.skipped} == lost
    assert all(s.shard == gone.path.name and "cannot fetch" in s.reason for s in stats.skipped)


def test_a_server_that_never_answers_times_out_with_one_line(monkeypatch):
    monkeypatch.setenv("SIGNSTREAM_REMOTE_TIMEOUT", "0.5")
    monkeypatch.setenv("SIGNSTREAM_REMOTE_ATTEMPTS", "2")
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        t0 = time.perf_counter()
        with pytest.raises(SignstreamError) as err:
            resolve_shards(f"http://127.0.0.1:{silent.getsockname()[1]}/dev")
        assert time.perf_counter() - t0 < 15
    assert "after 2 tries" in str(err.value) and "\n" not in str(err.value)


def test_after_repeated_failures_a_dead_host_fails_fast_until_its_next_probe(monkeypatch):
    from signstream.loaders import remote

    monkeypatch.setenv("SIGNSTREAM_REMOTE_ATTEMPTS", "2")
    calls = []

    def refuse():
        calls.append(time.monotonic())
        raise ConnectionRefusedError("refused")

    what = "http://10.255.255.1:9/dev/x.tar bytes 0-10"
    monkeypatch.setattr(remote, "_HOSTS", {})
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    for _ in range(remote.TRIP_AFTER):
        with pytest.raises(ConnectionError, match="after 2 tries"):
            remote.with_retries(what, refuse)
    assert len(calls) == 2 * remote.TRIP_AFTER
    with pytest.raises(ConnectionError, match="host unreachable"):
        remote.with_retries(what, refuse)
    assert len(calls) == 2 * remote.TRIP_AFTER  # no request made while the host is down
    remote._HOSTS["http://10.255.255.1:9"].last_try -= remote.PROBE_EVERY_S  # time for a probe
    assert remote.with_retries(what, lambda: b"ok") == b"ok"  # one success: back to normal
    assert remote._HOSTS["http://10.255.255.1:9"].failures == 0


def test_a_request_that_never_progresses_fails_by_name_within_its_deadline(monkeypatch):
    # Not a slow server (the socket timeouts cover that): a call whose coroutine never
    # finishes at all, as when an event loop or resolver is stuck. It must fail and be
    # retried like a timeout, never wait forever.
    import asyncio

    import fsspec.asyn

    from signstream.loaders import remote

    class Stuck(fsspec.asyn.AsyncFileSystem):
        protocol = "stuck"

        async def _cat_file(self, path, start=None, end=None, **kwargs):
            await asyncio.Event().wait()

    monkeypatch.setattr(remote, "filesystem", lambda url: Stuck(skip_instance_cache=True))
    monkeypatch.setenv("SIGNSTREAM_REMOTE_TIMEOUT", "0.4")
    monkeypatch.setenv("SIGNSTREAM_REMOTE_ATTEMPTS", "2")
    monkeypatch.setattr(remote, "_HOSTS", {})
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=r"http://stuck\.invalid/a\.tar bytes 0-4: FSTimeoutError.*2 tries"):
        remote.fetch_range("http://stuck.invalid/a.tar", 0, 4)
    with pytest.raises(SignstreamError, match=r"cannot fetch http://stuck\.invalid/manifest\.json"):
        remote.RemotePath("http://stuck.invalid/manifest.json").read_bytes()
    assert time.monotonic() - t0 < 12  # two calls x two tries of a 1.2 s deadline (+ waits between)


def test_a_forked_worker_does_not_inherit_fsspec_locks_held_at_the_fork():
    # A DataLoader worker is forked from a process whose fsspec I/O thread may hold a
    # lock at that instant; the worker must find every such lock free.
    import os

    import fsspec.asyn

    import signstream.loaders.remote  # noqa: F401  (registers the at-fork reset)

    held = [fsspec.asyn.get_lock(), fsspec.asyn._deferred_close_lock]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # child: report through the exit status only
            free = fsspec.asyn.get_lock().acquire(timeout=1) and fsspec.asyn._deferred_close_lock.acquire(timeout=1)
            os._exit(0 if free else 1)
    finally:
        for lock in held:
            lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
