"""``signstream verify``: check packed shards against their manifests.

For every split directory under OUT (or OUT itself when it is one): each shard
listed in ``manifest.json`` exists, has the recorded SHA-256, reads as a tar
with the recorded sample count and keys, and its DALI index describes it
exactly (the index a fresh scan would give, in DALI's ``wds2idx`` v1.2 format).
With ``--decode`` every video is decoded and its frame count compared with the
sample's JSON. Exit 0 only when every check passes. OUT may be an ``http(s)://``
or ``s3://`` URL: each tar is then streamed once for its checksum and layout
(and once more with ``--decode``), never stored locally.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders import remote
from signstream.tools.shardio import (
    Member,
    group_members,
    index_text,
    iter_samples,
    scan_tar,
    sha256_file,
)

HELP = "check packed shards against their manifests (checksums, tar, DALI index, optionally decode)"


def find_split_dirs(out: Path) -> list[Path]:
    """Split directories (holding ``manifest.json``) at or directly under ``out``."""
    if not remote.is_url(out) and not out.is_dir():
        raise SignstreamError(f"not a directory: {out}")
    if (out / "manifest.json").exists():
        return [out]
    dirs = sorted(p.parent for p in out.glob("*/manifest.json"))
    if not dirs:
        raise SignstreamError(f"no manifest.json in {out} or its subdirectories (is it a pack output?)")
    return dirs


def verify_shard(split_dir: Path, shard: dict, decode: bool) -> list[str]:
    """Check one shard; returns a list of problems (empty = fine)."""
    tar = split_dir / shard["file"]
    if not tar.exists():
        return [f"{tar}: missing"]
    problems = []
    digest, layout, error = _digest_and_layout(tar)
    if digest != shard["sha256"]:
        problems.append(f"{tar}: sha256 differs from the manifest")
    if error is not None:
        return problems + [f"{tar}: not a readable tar ({error})"]
    keys = [m[0].key for m in layout]
    if len(layout) != shard["samples"]:
        problems.append(f"{tar}: {len(layout)} samples, manifest says {shard['samples']}")
    if keys != shard.get("keys", keys):
        problems.append(f"{tar}: sample keys differ from the manifest")
    idx = split_dir / shard["index"]
    if not idx.exists():
        problems.append(f"{idx}: missing")
    elif idx.read_text() != index_text(layout):
        problems.append(f"{idx}: does not describe {tar.name} exactly")
    if decode:
        problems += _decode_check(tar)
    return problems


def _digest_and_layout(tar) -> tuple[str, list[list[Member]], str | None]:
    """SHA-256, sample layout and read error of a local tar, or of a remote one in one streamed pass."""
    if remote.is_url(tar):
        digest, infos, error = remote.stream_digest_and_members(tar)
        return digest, group_members(infos), error
    digest = sha256_file(tar)
    try:
        return digest, scan_tar(tar), None
    except (tarfile.TarError, OSError, EOFError) as exc:
        return digest, [], str(exc)


def _samples(tar):
    """``(key, {ext: data})`` per sample: read by offset locally, streamed from a URL."""
    if not remote.is_url(tar):
        yield from iter_samples(tar)
        return
    key, members = None, {}
    for info, data in remote.stream_members(tar, with_data=True):
        member = Member(info.name, info.offset_data, info.size)
        if member.key != key and members:
            yield key, members
            members = {}
        key, members[member.ext] = member.key, data
    if members:
        yield key, members


def _decode_check(tar: Path) -> list[str]:
    import av

    problems = []
    for key, members in _samples(tar):
        meta = json.loads(members.get("json", b"{}"))
        video = next((d for ext, d in members.items() if ext != "json"), None)
        if video is None:
            problems.append(f"{tar}: sample {key} has no video member")
            continue
        try:
            with av.open(io.BytesIO(video)) as container:
                count = sum(1 for _ in container.decode(video=0))
        except av.FFmpegError as exc:
            problems.append(f"{tar}: sample {key} does not decode ({exc})")
            continue
        if count != meta.get("num_frames"):
            problems.append(f"{tar}: sample {key} decodes to {count} frames, JSON says {meta.get('num_frames')}")
    return problems


def verify(out: str | Path, decode: bool = False) -> dict:
    """Verify every split under ``out``; returns ``{"ok", "splits": {...}, "problems": [...]}``."""
    report = {"ok": True, "splits": {}, "problems": []}
    for split_dir in find_split_dirs(remote.location(out)):
        try:
            manifest = json.loads((split_dir / "manifest.json").read_text())
        except json.JSONDecodeError as exc:
            raise SignstreamError(f"{split_dir / 'manifest.json'}: not valid JSON ({exc})") from None
        problems = []
        for shard in manifest.get("shards", []):
            problems += verify_shard(split_dir, shard, decode)
        extra = sorted({p.name for p in split_dir.glob("*.tar")} - {s["file"] for s in manifest["shards"]})
        problems += [f"{split_dir / name}: not listed in the manifest" for name in extra]
        report["splits"][split_dir.name] = {
            "shards": len(manifest.get("shards", [])), "samples": manifest["totals"]["samples"],
            "frames": manifest["totals"]["frames"], "skipped": len(manifest.get("skipped", [])),
            "problems": len(problems)}
        report["problems"] += problems
    report["ok"] = not report["problems"]
    return report


def add_arguments(p) -> None:
    """Register ``signstream verify`` options."""
    p.add_argument("out", help="a pack output directory (or one split directory)")
    p.add_argument("--decode", action="store_true", help="also decode every video and check frame counts")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    """Run ``signstream verify``; exit 0 only when all is well."""
    report = verify(args.out, decode=args.decode)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    for name, s in report["splits"].items():
        status = "ok" if not s["problems"] else f"{s['problems']} problem(s)"
        print(f"{name}: {s['shards']} shard(s), {s['samples']} videos, {s['frames']} frames, "
              f"{s['skipped']} skipped at pack time: {status}")
    for problem in report["problems"]:
        print(f"  {problem}")
    print("verify: OK" + (" (decoded)" if args.decode else "") if report["ok"] else "verify: FAILED")
    return 0 if report["ok"] else 1
