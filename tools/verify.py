"""``signstream verify``: check packed shards against their manifests.

For every split under OUT (a folder or an ``http(s)://`` / ``s3://`` URL, streamed, never stored): each listed
shard exists, has the recorded SHA-256 and sample keys, and its DALI index is the one a fresh scan would give;
``--decode`` also checks every sample's JSON and decodes every video against it. Key invariant: damage is a
finding, not a crash: one line naming where (shard, sample key) and why, every other sample still checked, and
exit code 1 at the end. Why: docs/design/packing.md
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders import remote
from signstream.loaders.format import (
    INT_RANGES,
    MANIFEST,
    MAX_JSON_BYTES,
    Member,
    MetaError,
    group_members,
    index_text,
    is_plain_name,
    manifest_problems,
    parse_manifest_json,
    parse_sample_json,
    read_layout,
    sample_meta_problems,
    sha256_file,
    version_problem,
)

HELP = "check packed shards against their manifests (checksums, tar, DALI index, optionally decode)"


def find_split_dirs(out: Path) -> list[Path]:
    """Split directories (holding ``manifest.json``) at or directly under ``out``."""
    if not remote.is_url(out) and not out.is_dir():
        raise SignstreamError(f"not a directory: {out}")
    if (out / MANIFEST).exists():
        return [out]
    dirs = sorted(p.parent for p in out.glob(f"*/{MANIFEST}"))
    if not dirs:
        raise SignstreamError(f"no {MANIFEST} in {out} or its subdirectories (is it a pack output?)")
    return dirs


def manifest_findings(path: Path) -> tuple[dict, list[str]]:
    """A manifest through the format's reader rules, every broken field a finding.

    Returns ``(manifest, problems)``: the parsed object (empty when it could not be read,
    is not an object or is of a version this signstream does not read, so none of its
    shards is opened) and one line per problem, each naming the file.
    """
    try:
        manifest = parse_manifest_json(path, str(path))
    except SignstreamError as exc:
        return {}, [str(exc)]
    problems = [f"{path}: {p}" for p in manifest_problems(manifest)]
    if version_problem(manifest):
        return {}, problems
    if not isinstance(manifest.get("shards", []), list):
        manifest["shards"] = []
    return manifest, problems


def verify_shard(split_dir: Path, shard: dict, decode: bool) -> list[str]:
    """Check one shard entry of a manifest; returns a list of problems (empty = fine)."""
    if not is_plain_name(shard.get("file")):
        return []  # already reported as a bad entry; nothing to open
    tar = split_dir / shard["file"]
    if not _is_file(tar):
        return [f"{tar}: missing"]
    problems = []
    digest, layout, error = _digest_and_layout(tar)
    if "sha256" in shard and digest != shard["sha256"]:
        problems.append(f"{tar}: sha256 differs from the manifest")
    if error is not None:
        problems.append(f"{tar}: not a readable tar ({error}); {len(layout)} sample(s) before the damage")
    keys = [m[0].key for m in layout]
    if error is None and "samples" in shard and len(layout) != shard["samples"]:
        problems.append(f"{tar}: {len(layout)} samples, manifest says {shard['samples']}")
    if error is None and keys != shard.get("keys", keys):
        problems.append(f"{tar}: sample keys differ from the manifest")
    if is_plain_name(shard.get("index")):
        idx = split_dir / shard["index"]
        if not _is_file(idx):
            problems.append(f"{idx}: missing")
        elif error is None and _read_text(idx) != index_text(layout):
            problems.append(f"{idx}: does not describe {tar.name} exactly")
    if decode:
        problems += _decode_check(tar, layout)
    return problems


def _is_file(path) -> bool:
    return path.exists() if remote.is_url(path) else path.is_file()


def _read_text(path) -> str:
    if remote.is_url(path):
        return path.read_bytes().decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def _digest_and_layout(tar) -> tuple[str, list[list[Member]], object]:
    """SHA-256, sample layout and read error of a local tar, or of a remote one in one streamed pass."""
    if remote.is_url(tar):
        digest, infos, error = remote.stream_digest_and_members(tar)
        return digest, group_members(infos), error
    layout, error = read_layout(tar)
    return sha256_file(tar), layout, error


def _samples(tar, layout):
    """``(key, {ext: data}, problems)`` per sample: read by offset locally, streamed from a URL."""
    if remote.is_url(tar):
        key, members = None, {}
        for info, data in remote.stream_members(tar, with_data=True):
            member = Member(info.name, info.offset_data, info.size)
            if member.key != key and members:
                yield key, members, []
                members = {}
            key, members[member.ext] = member.key, data
        if members:
            yield key, members, []
        return
    with open(tar, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        for members in layout:
            data, problems = {}, []
            for m in members:
                if m.ext == "json" and m.size > MAX_JSON_BYTES:  # refused before it is read
                    problems.append(
                        f"JSON member is {m.size} bytes, over the {MAX_JSON_BYTES} a sample's metadata may hold"
                    )
                    data[m.ext] = None
                    continue
                f.seek(m.offset)
                # a tar header's size is a claim: never read past the end of the file
                data[m.ext] = f.read(max(0, min(m.size, end - m.offset)))
                if len(data[m.ext]) != m.size:
                    problems.append(f"member {m.name} is cut short")
            yield members[0].key, data, problems


def _decode_check(tar, layout) -> list[str]:
    """Check every sample's JSON and video; one line per problem, every sample visited.

    A remote tar whose stream breaks (a dropped connection, a server error)
    is one more problem naming how far the check got, not a crash.
    """
    problems, checked = [], 0
    try:
        for key, data, cut in _samples(tar, layout):
            problems += [f"{tar}: sample {key}: {reason}" for reason in cut + check_sample(key, data)]
            checked += 1
    except (tarfile.TarError, *remote.transient_errors()) as exc:
        if not remote.is_url(tar):
            raise
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:200]
        problems.append(
            f"{tar}: streaming for --decode broke after {checked} of {len(layout)} sample(s) "
            f"({reason}); every sample after that is unchecked"
        )
    return problems


def check_sample(key: str, members: dict[str, bytes | None]) -> list[str]:
    """Reasons why one sample (``{ext: bytes}``) is broken; empty when it is sound.

    A ``json`` entry of ``None`` is a member too large to read, already reported.
    """
    reasons = []
    oversized = "json" in members and members["json"] is None  # already reported by _samples
    meta, why = (None, None) if oversized else _parse_meta(members.get("json"))
    if why:
        reasons.append(why)
    videos = [ext for ext in members if ext != "json"]
    if not videos:
        return reasons + ["no video member"]
    if len(videos) > 1:
        reasons.append(f"more than one video member ({', '.join(sorted(videos))})")
    import av

    try:
        count, size, codec = _decode(members[videos[0]])
    except (av.FFmpegError, ValueError, OSError, EOFError, IndexError) as exc:
        return reasons + [f"{videos[0]} does not decode ({type(exc).__name__}: {exc})"]
    if meta is None:
        return reasons
    if meta.get("key", key) != key:
        reasons.append(f"JSON key {meta['key']!r} differs from the member key")
    if "num_frames" in meta and count != meta["num_frames"]:
        reasons.append(f"decodes to {count} frames, JSON says {meta['num_frames']}")
    claimed = (meta.get("height"), meta.get("width"))
    if size is not None and None not in claimed and size != claimed:
        reasons.append(f"frames are {size[0]}x{size[1]} (HxW), JSON says {claimed[0]}x{claimed[1]}")
    if meta.get("codec") not in (None, codec):
        reasons.append(f"video is {codec}, JSON says {meta['codec']}")
    return reasons


def _parse_meta(raw: bytes | None) -> tuple[dict | None, str | None]:
    """The format's strict reader, kept going past bad fields so the video is still compared."""
    try:
        meta = parse_sample_json(raw)
    except MetaError as exc:
        return None, str(exc)
    why = "; ".join(sample_meta_problems(meta, complete=True))
    for k, (lo, hi) in INT_RANGES.items():
        if k in meta and not (type(meta[k]) is int and lo <= meta[k] <= hi):
            del meta[k]  # not comparable with what the video holds
    return meta, why or None


def _decode(video: bytes) -> tuple[int, tuple[int, int] | None, str]:
    """Frame count, first frame's (height, width), codec name of a video's first stream."""
    import av

    count, size = 0, None
    with av.open(io.BytesIO(video)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        codec = container.streams.video[0].codec_context.name
        for frame in container.decode(video=0):
            if size is None:
                size = (frame.height, frame.width)
            count += 1
    return count, size, codec


def verify_split(split_dir: Path, decode: bool) -> tuple[dict, list[str]]:
    """Verify one split directory; returns its summary and its problems."""
    path = split_dir / MANIFEST
    manifest, problems = manifest_findings(path)
    shards = manifest.get("shards", [])
    for shard in shards:
        if isinstance(shard, dict):
            problems += verify_shard(split_dir, shard, decode)
    listed = {s.get("file") for s in shards if isinstance(s, dict)}
    # an unreadable manifest lists nothing: one finding, not one more per tar
    extra = sorted({p.name for p in split_dir.glob("*.tar")} - listed) if manifest else []
    problems += [f"{split_dir / name}: not listed in the manifest" for name in extra]
    totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else {}
    summary = {
        "shards": len(shards),
        "samples": totals.get("samples"),
        "frames": totals.get("frames"),
        "skipped": len(skipped) if isinstance(skipped := manifest.get("skipped"), list) else 0,
        "problems": len(problems),
    }
    return summary, problems


def verify(out: str | Path, decode: bool = False) -> dict:
    """Verify every split under ``out``; returns ``{"ok", "splits": {...}, "problems": [...]}``."""
    report = {"ok": True, "splits": {}, "problems": []}
    for split_dir in find_split_dirs(remote.location(out)):
        summary, problems = verify_split(split_dir, decode)
        report["splits"][split_dir.name] = summary
        report["problems"] += problems
    report["ok"] = not report["problems"]
    return remote.redact(report)  # problems quote shard URLs: never their password or signature


def add_arguments(p) -> None:
    """Register ``signstream verify`` options."""
    p.add_argument("out", help="a pack output directory (or one split directory)")
    p.add_argument(
        "--decode",
        action="store_true",
        help="also check every sample's JSON and decode every video (frames, size, codec)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    """Run ``signstream verify``; exit 0 only when all is well."""
    report = verify(args.out, decode=args.decode)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    for name, s in report["splits"].items():
        status = "ok" if not s["problems"] else f"{s['problems']} problem(s)"
        print(
            f"{name}: {s['shards']} shard(s), {_n(s['samples'])} videos, {_n(s['frames'])} frames, "
            f"{s['skipped']} skipped at pack time: {status}"
        )
    for problem in report["problems"]:
        print(f"  {problem}")
    print("verify: OK" + (" (decoded)" if args.decode else "") if report["ok"] else "verify: FAILED")
    return 0 if report["ok"] else 1


def _n(value) -> str:
    return "?" if value is None else str(value)
