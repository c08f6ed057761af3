"""Local object servers for the remote-shard tests and benchmark: HTTP and S3 on 127.0.0.1.

:func:`http_server` serves a directory with single-range ``Range`` support or none (``ranges=False``, like
``python -m http.server``), a fixed delay per request, half-sent responses (``drop``) and GETs per file counted at
``/_requests``; :func:`s3_server` runs moto's S3 server in a child process, because DALI's S3 client holds the
GIL while it waits; :func:`http_server_process` runs the HTTP server in a child process as a real one would be.
Each picks a free port and stops when its ``with`` block ends. Why: docs/design/benchmarks.md
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single byte ranges, quiet, and optional delays, drops and counting."""

    drop: frozenset[str] = frozenset()
    drop_times: int | None = None  # responses of a dropped file that are cut (None: all)
    ranges = True
    delay = 0.0
    # GETs and cut responses per file name (fresh ones for each http_server)
    counts: collections.Counter = collections.Counter()
    cuts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        if self.path == "/_requests":
            with self.lock:
                body = json.dumps(dict(self.counts)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with self.lock:
            self.counts[Path(self.path).name] += 1
        time.sleep(self.delay)
        super().do_GET()

    def do_HEAD(self) -> None:
        time.sleep(self.delay)
        super().do_HEAD()

    def send_head(self):
        if not self.ranges:  # a server that knows nothing of ranges: the whole file, always
            del self.headers["Range"]
            return super().send_head()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start = int(match.group(1))
        stop = min(int(match.group(2)) + 1 if match.group(2) else size, size)
        if start >= size:
            self.send_error(416, "range not satisfiable")
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller (the base class)
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = stop - start
        return f

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if Path(self.path).name in self.drop and self._cut_this_one():
            # promise the whole body, send half of it, then hang up
            half = (remaining if remaining is not None else 1 << 30) // 2
            outputfile.write(source.read(half))
            outputfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        while remaining > 0:
            block = source.read(min(remaining, 1 << 20))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)

    def _cut_this_one(self) -> bool:
        with self.lock:
            self.cuts[Path(self.path).name] += 1
            return self.drop_times is None or self.cuts[Path(self.path).name] <= self.drop_times


@contextlib.contextmanager
def http_server(
    directory: str | os.PathLike,
    drop: tuple[str, ...] = (),
    *,
    drop_times: int | None = None,
    ranges: bool = True,
    delay: float = 0.0,
) -> Iterator[str]:
    """Serve ``directory`` at ``http://127.0.0.1:PORT`` (yielded) until the block ends.

    Args:
        directory: what to serve.
        drop: file names whose responses stop half way (the first ``drop_times`` ones; all if ``None``).
        drop_times: see ``drop``.
        ranges: honour ``Range`` (``False``: always the whole file, like ``python -m http.server``).
        delay: seconds added to every request (an object store's latency).
    """
    handler = type(
        "Handler",
        (RangeHandler,),
        {
            "drop": frozenset(drop),
            "drop_times": drop_times,
            "ranges": ranges,
            "delay": delay,
            "counts": collections.Counter(),
            "cuts": collections.Counter(),
            "lock": threading.Lock(),
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _child_port(cmd: list[str], what: str, timeout: float) -> tuple[subprocess.Popen, int]:
    """Start a server child that prints its port on its first line and stops when stdin closes."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready or not ready[0].strip().isdigit():
        _stop_child(proc)
        raise RuntimeError(f"{what} did not start")
    return proc, int(ready[0])


def _stop_child(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def http_server_process(
    directory: str | os.PathLike, timeout: float = 60.0, *, delay: float = 0.0, ranges: bool = True
) -> Iterator[str]:
    """Like :func:`http_server`, in a child process; yields ``http://127.0.0.1:PORT``."""
    cmd = [sys.executable, "-m", "signstream.benchmarks.servers", "http", str(directory), str(delay)]
    proc, port = _child_port(cmd + ([] if ranges else ["no-range"]), "the HTTP server", timeout)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_child(proc)


_MOTO = (
    "import sys\n"
    "from moto.server import ThreadedMotoServer\n"
    "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "server.start()\n"
    "print(server.get_host_and_port()[1], flush=True)\n"
    "sys.stdin.read()\n"
    "server.stop()\n"
)

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@contextlib.contextmanager
def s3_server(timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Run moto's S3 server in a child process; yields the AWS variables that point at it.

    Put the yielded variables into ``os.environ`` (they include dummy
    credentials and ``AWS_ENDPOINT_URL``) before creating S3 clients.
    """
    proc, port = _child_port([sys.executable, "-c", _MOTO], "moto's S3 server (is moto[server] installed?)", timeout)
    try:
        yield {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    finally:
        _stop_child(proc)


def upload_tree(local: str | os.PathLike, url: str) -> None:
    """Copy a local directory tree to ``s3://bucket/prefix`` (creating the bucket)."""
    from signstream.loaders.remote import filesystem

    fs = filesystem(url)  # keyed by the current endpoint (a plain S3FileSystem() may be a stale cached one)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.put(str(local).rstrip("/") + "/", url.rstrip("/") + "/", recursive=True)


def request_counts(base: str) -> dict[str, int]:
    """GETs per file name a server from :func:`http_server` has answered so far."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/_requests", timeout=10) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    """``servers http DIR [DELAY_S] [no-range]``: serve DIR, print the port, stop when stdin closes."""
    args = sys.argv[1:] if argv is None else argv
    if not 2 <= len(args) <= 4 or args[0] != "http":
        print("usage: python -m signstream.benchmarks.servers http DIR [DELAY_S] [no-range]", file=sys.stderr)
        return 2
    delay = float(args[2]) if len(args) > 2 else 0.0
    with http_server(args[1], delay=delay, ranges="no-range" not in args[3:]) as url:
        print(url.rsplit(":", 1)[1], flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
