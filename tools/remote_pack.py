"""``signstream pack --out s3://bucket/prefix``: pack into a bucket, one finished shard at a time.

The local packer works in a staging directory; a background thread uploads each finished
shard (index, then tar), and each split's ``manifest.json`` goes last, so a split is
visible only when every shard it lists is in place. One run per prefix (``.signstream.lock``).
Why, and the overwrite and skip rules: docs/design/remote.md
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from signstream import SignstreamError
from signstream.loaders import remote
from signstream.loaders.format import MANIFEST, sha256_file
from signstream.loaders.ownership import BucketLock
from signstream.tools.pack import STATE_FILE, pack_corpus
from signstream.tools.packstate import is_any_shard_name

POLL_S = 0.5  # how often the uploader looks for newly finished shards


def default_staging(url: str) -> Path:
    """The staging directory used when none is named: stable per destination, so reruns resume."""
    # from the redacted URL: a folder name under the shared temporary directory is visible to all
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", remote.redact(url).split("://", 1)[1].strip("/"))
    return Path(tempfile.gettempdir()) / "signstream-pack" / name


def check_destination(url: str) -> None:
    """Only ``s3://`` can be written to, and its bucket must exist (checked before any work)."""
    if not url.startswith("s3://"):
        raise SignstreamError(
            f"--out {url}: packing writes to a local directory or s3://bucket/prefix (http(s):// is read-only)"
        )
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    fs = remote.filesystem(url)
    try:
        found = remote.with_retries(f"s3://{bucket}", lambda: fs.exists(bucket))
    except ConnectionError as exc:
        raise SignstreamError(f"cannot reach {exc}") from None
    if not found:
        raise SignstreamError(f"bucket not found: s3://{bucket} (create it first)")


class Uploader:
    """Copies finished files from the staging directory to the bucket, in a safe order."""

    def __init__(self, staging: Path, url: str):
        self.staging, self.url = staging, url.rstrip("/")
        self.fs = remote.filesystem(url)
        self.done: set[str] = set()
        self.uploaded: list[str] = []  # relative names, in upload order
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-uploader", daemon=True)

    def put(self, relative: str) -> None:
        """Upload one staged file unless the bucket holds exactly these bytes (same SHA-256)."""
        local, target = self.staging / relative, f"{self.url}/{relative}"
        digest = sha256_file(local)
        try:
            existing = remote.with_retries(target, lambda: self.fs.metadata(target)).get("sha256")
        except FileNotFoundError:
            existing = None
        if existing != digest:  # absent, from another run, or uploaded without a digest
            remote.with_retries(target, lambda: self.fs.put_file(str(local), target, Metadata={"sha256": digest}))
        self.uploaded.append(relative)

    def remove(self, relative: str) -> None:
        """Delete one object of the prefix (absent is fine)."""
        target = f"{self.url}/{relative}"
        try:
            remote.with_retries(target, lambda: self.fs.rm_file(target))
        except FileNotFoundError:
            pass

    def sync_shards(self) -> None:
        """Upload every shard the packer has recorded as finished (index, then tar)."""
        for split_dir in sorted(p for p in self.staging.iterdir() if p.is_dir()):
            for entry in _finished(split_dir):
                for name in (entry["index"], entry["file"]):
                    relative = f"{split_dir.name}/{name}"
                    if relative not in self.done and (split_dir / name).is_file():
                        self.put(relative)
                        self.done.add(relative)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                self.sync_shards()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by stop()
            self._error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; re-raise an upload error of the thread (as a one-line error)."""
        self._stop.set()
        if self._thread.ident is not None:  # never started when pack refused before writing
            self._thread.join()
        if isinstance(self._error, ConnectionError):
            raise SignstreamError(f"upload failed: {self._error}") from None
        if self._error is not None:
            raise self._error

    def publish(self, splits: list[str]) -> None:
        """The rest of a finished pack: remaining shards, stats and vocabulary, manifests last."""
        self.sync_shards()
        for split in splits:
            if (self.staging / split / "pack-stats.json").is_file():
                self.put(f"{split}/pack-stats.json")
        if (self.staging / "glosses.txt").is_file():
            self.put("glosses.txt")
        for split in splits:
            if (self.staging / split / MANIFEST).is_file():
                self.put(f"{split}/{MANIFEST}")


def _finished(split_dir: Path) -> list[dict[str, Any]]:
    """Shards of a split known to be complete: from the manifest, else the packer's state file."""
    for name in (MANIFEST, STATE_FILE):
        path = split_dir / name
        try:
            return json.loads(path.read_text())["shards"]
        except (FileNotFoundError, KeyError, ValueError):
            continue  # not there (yet), or replaced while being read: next poll
    return []


def bucket_manifests(url: str, fps: dict[str, str], overwrite: bool) -> dict[str, dict]:
    """Check each split's manifest in the bucket against this run; returns those to replace.

    Raises:
        SignstreamError: a split there was packed from other rows or options
            (or its manifest is unreadable) and ``overwrite`` is false.
    """
    fs, replaced = remote.filesystem(url), {}
    for split, fp in sorted(fps.items()):
        target = f"{url}/{split}/{MANIFEST}"
        try:
            manifest = json.loads(remote.with_retries(target, lambda t=target: fs.cat_file(t)))
        except FileNotFoundError:
            continue
        except ValueError:
            manifest = {}  # not a manifest pack wrote: replaced only on request, like any mismatch
        except ConnectionError as exc:
            raise SignstreamError(f"cannot reach {exc}") from None
        if isinstance(manifest, dict) and manifest.get("fingerprint") == fp:
            continue
        if not overwrite:
            raise SignstreamError(
                f"{url}/{split} holds shards packed from other rows or options; pass --overwrite to replace them"
            )
        replaced[split] = manifest if isinstance(manifest, dict) else {}
    return replaced


def _shard_names(split: str, manifest: dict | None) -> set[str]:
    """Shard and index names a manifest lists (only names of pack's own form)."""
    shards = (manifest or {}).get("shards")
    names = (
        [s.get(k) for s in shards if isinstance(s, dict) for k in ("file", "index")] if isinstance(shards, list) else []
    )
    return {n for n in names if isinstance(n, str) and is_any_shard_name(split, n)}


def pack_to_bucket(
    adapter: str, url: str, *, staging: str | Path | None = None, overwrite: bool = False, **kwargs: Any
) -> dict:
    """Pack a corpus into ``s3://bucket/prefix`` (docs/design/remote.md); returns what ``pack_corpus`` returns.

    Raises:
        SignstreamError: not an ``s3://`` URL, missing bucket, another run
            writing the prefix, a split there packed from other rows or options
            (without ``overwrite``), failed upload, or any error of
            :func:`~signstream.tools.pack.pack_corpus`.
    """
    check_destination(url)
    url = url.rstrip("/")
    keep = staging is not None
    staging = Path(staging) if staging is not None else default_staging(url)
    with BucketLock(url, key="--out"):
        uploader, replaced = Uploader(staging, url), {}

        def before_write(fps: dict[str, str]) -> None:
            replaced.update(bucket_manifests(url, fps, overwrite))
            for split in sorted(replaced):  # the old split disappears before any new shard goes up
                uploader.remove(f"{split}/{MANIFEST}")
            uploader.start()

        try:
            result = pack_corpus(adapter, staging, overwrite=overwrite, before_write=before_write, **kwargs)
        finally:
            uploader.stop()
        uploader.publish(sorted(result["splits"]))
        for split, old in sorted(replaced.items()):
            for name in sorted(_shard_names(split, old) - _shard_names(split, result["splits"].get(split))):
                uploader.remove(f"{split}/{name}")
    if not keep:
        shutil.rmtree(staging, ignore_errors=True)
    return result
