"""Zero work is an error: a split whose every video is skipped ends the recipe with one line.

Every sample fails cheaply in two ways: shards whose video members are
overwritten with zeros (the tar and its index stay intact, decoding fails), and
an HTTP server that answers 500 to every shard request. Each recipe must exit
non-zero naming the split, the skipped count and the first reasons (key and
shard), and leave no merged feature file that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tarfile
import threading
from http.server import ThreadingHTTPServer

import pytest

from signstream.benchmarks.servers import RangeHandler
from signstream.tools.cli import main as cli
from tests.remote_fixtures import FAST_FAILURE

pytestmark = pytest.mark.hostile

EXTRACT = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "progress=false",
    "dtype=float32",
]
FINETUNE = ["backbone=s3d", "stop_after=4", "image_size=32", "max_frames=16", "batch_size=2", "head=linear", "epochs=1"]


def error_line(capsys) -> str:
    """The recipe's one error line (skip warnings may precede it); no traceback anywhere."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def undecodable(packed, dest, splits=("train", "dev", "test")):
    """A copy of ``packed`` whose video members in ``splits`` are zeros (JSON, tars and indexes intact)."""
    shutil.copytree(packed, dest)
    for split in splits:
        for tar in (dest / split).glob("*.tar"):
            with tarfile.open(tar) as t:
                videos = [m for m in t.getmembers() if m.isfile() and not m.name.endswith(".json")]
            with open(tar, "r+b") as f:
                for m in videos:
                    f.seek(m.offset_data)
                    f.write(bytes(m.size))
    return dest


@pytest.fixture(scope="module")
def broken(packed, tmp_path_factory):
    return undecodable(packed, tmp_path_factory.mktemp("broken") / "packed")


@pytest.fixture(scope="module")
def broken_dev(packed, tmp_path_factory):
    return undecodable(packed, tmp_path_factory.mktemp("broken_dev") / "packed", splits=("dev",))


class FailingShards(RangeHandler):
    """Serves manifests, indexes and glosses, answers HEAD for shards, but 500 to every shard read."""

    def send_head(self):
        if self.command == "GET" and self.path.split("?")[0].endswith(".tar"):
            self.send_error(500, "internal error")
            return None
        return super().send_head()


@contextlib.contextmanager
def failing_server(directory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FailingShards, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def assert_names_the_split(line: str, split: str, skipped: int) -> None:
    assert f"split {split!r} yielded no video" in line, line
    assert f"{skipped} skipped" in line and f"{split}-000000.tar" in line, line
    assert line.count("(") >= 3  # the first reasons, each "key (shard: reason)"


def test_extraction_of_undecodable_shards_fails_naming_the_split_and_writes_no_merged_files(broken, tmp_path, capsys):
    out = tmp_path / "feats"
    assert (
        cli(["extract_features", f"shards={broken}", f"out={out}", "splits=dev,test", "calibrate_bn=0", *EXTRACT]) == 2
    )
    line = error_line(capsys)
    assert_names_the_split(line, "dev", 3)
    assert "decode failed" in line
    for name in ("features.dev", "features.test", "dev/features.index.json", "summary.json"):
        assert not (out / name).exists(), name


def test_extraction_with_every_remote_fetch_failing_fails_naming_the_split(packed, tmp_path, capsys, monkeypatch):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "feats"
    with failing_server(packed) as base:
        assert cli(["extract_features", f"shards={base}", f"out={out}", "splits=test", "calibrate_bn=0", *EXTRACT]) == 2
    line = error_line(capsys)
    assert_names_the_split(line, "test", 3)
    assert "500" in line
    assert not (out / "features.test").exists() and not (out / "summary.json").exists()


def test_bn_calibration_on_a_split_with_no_readable_video_fails_before_writing(broken, tmp_path, capsys):
    out = tmp_path / "feats"
    assert cli(["extract_features", f"shards={broken}", f"out={out}", "splits=dev", "calibrate_bn=2", *EXTRACT]) == 2
    line = error_line(capsys)
    assert "split 'dev' yielded no video to calibrate BatchNorm on" in line and "3 skipped" in line
    assert not (out / "features.dev").exists()


def test_finetune_with_an_undecodable_dev_split_fails_naming_it(broken_dev, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli(["finetune_ctc", f"shards={broken_dev}", f"out={out}", "num_workers=0", *FINETUNE]) == 2
    line = error_line(capsys)
    assert_names_the_split(line, "dev", 3)
    assert not (out / "metrics.json").exists() and not (out / "best.safetensors").exists()


def test_finetune_with_an_undecodable_train_split_and_a_worker_fails_with_one_line(broken, tmp_path, capsys):
    # the loader's refusal happens in a DataLoader worker: it must arrive as the worker's one line
    out = tmp_path / "ft"
    assert cli(["finetune_ctc", f"shards={broken}", f"out={out}", "num_workers=1", *FINETUNE]) == 2
    line = error_line(capsys)
    assert "no readable sample" in line and "train-00000" in line and "decode failed" in line
    assert not (out / "metrics.json").exists()
