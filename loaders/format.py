"""The shard format, once: keys, sample members and their JSON, manifest, tar and DALI index.

A pack output is ``<root>/<split>/<split>-NNNNNN.tar`` shards, a DALI v1.2 index beside each
and ``manifest.json`` (:class:`Manifest`), with ``glosses.txt`` in the root (:class:`PackLayout`).
A sample is ``<key>.<video ext>`` plus ``<key>.json`` (:data:`SAMPLE_FIELDS`). A shard or manifest
is untrusted input: each passes one strict reader (:func:`read_sample_meta`, :func:`read_manifest`)
that names the file and field on anything wrong, and refuses a version outside :data:`READABLE_VERSIONS`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from signstream import SignstreamError
from signstream.loaders.fileio import atomic_write

FORMAT_NAME = "signstream-shards"
FORMAT_VERSION = 1  # what this signstream writes
READABLE_VERSIONS = frozenset({1})  # what it reads: a bump keeps the older versions here
MANIFEST = "manifest.json"
GLOSSES = "glosses.txt"
INDEX_VERSION = "v1.2"
BLOCK = 512

VIDEO_EXTS = ("webm", "mp4", "mkv")
EXT_CODEC = {"webm": "vp9", "mp4": "h264", "mkv": "mjpeg"}
# num_frames, height and width are whole numbers; fps is the source's rate as a JSON number (an exact
# 30000/1001 as the nearest float; a variable-rate source its average); the rest are text.
SAMPLE_FIELDS = ("name", "key", "split", "signer", "gloss", "text", "num_frames", "fps", "height", "width", "codec")
SAMPLE_INTS = ("num_frames", "height", "width")
SAMPLE_TEXTS = ("name", "key", "split", "signer", "gloss", "text", "codec")
# Bounds of a sample's JSON member. What pack writes is far inside them; a reader checks
# them before it allocates anything from a claimed size.
MAX_JSON_BYTES = 256 << 10
MAX_JSON_DEPTH = 16
MAX_TEXT = 4096  # characters of one text field (a gloss sequence, a translation)
MAX_FRAMES = 1_000_000  # 11 hours at 25 fps
MAX_SIDE = 16384  # pixels: beyond what any codec level allows
MAX_FPS = 1000.0
INT_RANGES = {"num_frames": (1, MAX_FRAMES), "height": (1, MAX_SIDE), "width": (1, MAX_SIDE)}
SHARD_FIELDS = ("file", "index", "sha256", "samples", "frames", "bytes", "keys")
TOTALS_FIELDS = ("shards", "samples", "frames", "bytes", "png_bytes")
MANIFEST_TEXTS = ("split", "codec", "video_ext", "fingerprint")
MANIFEST_OBJECTS = ("options", "versions")
MANIFEST_FIELDS = ("format", *MANIFEST_TEXTS, *MANIFEST_OBJECTS, "shards", "totals", "skipped")
MAX_MANIFEST_BYTES = 1 << 30  # a million samples' keys are ~100 MB

KEY_MAX = 80
KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


# ----------------------------------------------------------------------- keys
def sample_key(name: str) -> str:
    """The key of one corpus name, before de-duplication (``"a.b/c"`` → ``"a_b_c"``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:KEY_MAX] or "sample"


def make_keys(names: Iterable[str]) -> list[str]:
    """Dot-free, unique keys for corpus names, in order (the second ``a.b`` becomes ``a_b_2``).

    WebDataset and DALI split member names at the first dot, and corpus names may hold dots or
    repeat; the original name stays in the JSON. Pack, the PNG-folder loader and the feature files
    all key samples this way, so one corpus gives the same keys (and augmentation streams) everywhere.
    """
    keys, seen = [], set()
    for name in names:
        base = sample_key(name)
        key, n = base, 1
        while key in seen:
            n += 1
            key = f"{base}_{n}"
        seen.add(key)
        keys.append(key)
    return keys


def is_key(text: str) -> bool:
    """True when ``text`` is already a valid key (dot-free, ``[A-Za-z0-9_-]`` only)."""
    return KEY_RE.fullmatch(text) is not None


# -------------------------------------------------------------------- members
def sample_members(key: str, video_ext: str, video: bytes, meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The tar members of one video sample: ``<key>.<ext>`` then ``<key>.json``."""
    return [(f"{key}.{video_ext}", video), (f"{key}.json", sample_json(meta))]


def sample_json(meta: dict[str, Any]) -> bytes:
    """A sample's JSON member: sorted keys, UTF-8 (names keep their own characters)."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


class MetaError(ValueError):
    """A sample's JSON member breaks the format; the message is the one-line reason."""


def read_sample_meta(raw: bytes | None, key: str, video_bytes: int | None = None) -> dict[str, Any]:
    """The strict reader of a sample's JSON member: parse it bounded, then check every field.

    Args:
        raw: the member's bytes (``None``: the sample has no JSON member).
        key: the sample's key (filled in when the JSON lacks one).
        video_bytes: size of the sample's video member, which bounds ``num_frames``.

    Returns:
        The metadata, every present field of :data:`SAMPLE_FIELDS` of the right type and range.
        Fields may be missing (third-party shards): the loaders then probe the video.

    Raises:
        MetaError: naming every problem found, on one line.
    """
    meta = parse_sample_json(raw)
    problems = sample_meta_problems(meta, video_bytes)
    if problems:
        raise MetaError("; ".join(problems))
    meta.setdefault("key", key)
    return meta


def parse_sample_json(raw: bytes | None) -> dict[str, Any]:
    """Parse a sample's JSON member: size checked first, nesting bounded, an object required.

    Raises:
        MetaError: a missing, empty, oversized, invalid or too deeply nested
            member, ``NaN``/``Infinity`` (not JSON), or a JSON value that is not an object.
    """
    if raw is None:
        raise MetaError("no JSON member")
    if len(raw) > MAX_JSON_BYTES:
        raise MetaError(f"JSON member is {len(raw)} bytes, over the {MAX_JSON_BYTES} a sample's metadata may hold")
    if not raw.strip():
        raise MetaError("JSON member is empty")
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:  # the parser recurses per nesting level
        raise MetaError(f"JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetaError(f"JSON is not valid ({exc})") from None
    if not isinstance(meta, dict):
        raise MetaError(f"JSON is a {type(meta).__name__}, not an object")
    if _depth(meta) > MAX_JSON_DEPTH:  # shallower than the recursion limit, still no metadata
        raise MetaError(f"JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return meta


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH and isinstance(item, (dict, list)):
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def sample_meta_problems(meta: dict[str, Any], video_bytes: int | None = None, complete: bool = False) -> list[str]:
    """Every way ``meta`` breaks the field rules of the format (empty when it keeps them).

    Args:
        meta: a parsed sample JSON object.
        video_bytes: size of the video member: a container stores at least one
            byte per frame, so a larger ``num_frames`` is a lie.
        complete: also report fields of :data:`SAMPLE_FIELDS` that are missing.
    """
    missing = [k for k in SAMPLE_FIELDS if k not in meta] if complete else []
    problems = [f"JSON lacks {', '.join(missing)}"] if missing else []
    for k, (lo, hi) in INT_RANGES.items():
        v = meta.get(k)
        if k in meta and not (type(v) is int and lo <= v <= hi):
            problems.append(f"JSON {k} not a whole number from {lo} to {hi} (got {_short(v)})")
    n = meta.get("num_frames")
    if video_bytes is not None and type(n) is int and video_bytes < n <= MAX_FRAMES:
        problems.append(f"JSON num_frames {n} is more than a {video_bytes}-byte video can hold")
    fps = meta.get("fps")
    if "fps" in meta and not (type(fps) in (int, float) and 0 < fps <= MAX_FPS):  # NaN fails too
        problems.append(f"JSON fps not a frame rate above 0 and at most {MAX_FPS:g} (got {_short(fps)})")
    for k in SAMPLE_TEXTS:
        v = meta.get(k)
        if k in meta and not (isinstance(v, str) and len(v) <= MAX_TEXT):
            what = f"{len(v)} characters, over {MAX_TEXT}" if isinstance(v, str) else f"got {_short(v)}"
            problems.append(f"JSON {k} not text of at most {MAX_TEXT} characters ({what})")
    return problems


def _short(value: Any) -> str:
    """A bounded repr for messages: a crafted value must not flood a log line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def shard_name(split: str, number: int) -> str:
    """The file name of shard ``number`` of a split: ``<split>-NNNNNN.tar``."""
    return f"{split}-{number:06d}.tar"


# ------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class PackLayout:
    """The files of a pack output under ``root`` (a :class:`~pathlib.Path`, or a remote path joined with ``/``)."""

    root: Any

    def manifest_path(self, split: str) -> Any:
        """A split's ``manifest.json``: ``<root>/<split>/manifest.json``."""
        return self.root / split / MANIFEST

    @property
    def glosses_path(self) -> Any:
        """The train vocabulary in the pack root: ``<root>/glosses.txt``."""
        return self.root / GLOSSES

    def shard_path(self, split: str, number: int) -> Any:
        """Shard ``number`` of a split (its index is :func:`index_path_for` of it)."""
        return self.root / split / shard_name(split, number)


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a manifest: tar and index names (plain, in the split dir), checksum, counts, keys."""

    file: str
    index: str
    sha256: str
    samples: int
    frames: int
    bytes: int
    keys: tuple[str, ...]

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ShardEntry:
        """An entry from a dict the packer built or :func:`manifest_problems` passed."""
        return cls(**{k: entry[k] for k in SHARD_FIELDS if k != "keys"}, keys=tuple(entry["keys"]))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SHARD_FIELDS} | {"keys": list(self.keys)}


@dataclass(frozen=True)
class Manifest:
    """A split's ``manifest.json``: what was packed, how, and every shard.

    ``options``, ``versions`` and the ``skipped`` rows (each with a ``name`` and a
    ``reason``) are kept as the JSON objects they are; ``totals`` holds :data:`TOTALS_FIELDS`.
    """

    split: str
    codec: str
    video_ext: str
    fingerprint: str
    options: dict[str, Any]
    shards: tuple[ShardEntry, ...]
    totals: dict[str, int]
    skipped: tuple[dict[str, Any], ...] = ()
    versions: dict[str, Any] = field(default_factory=dict)
    version: int = field(default_factory=lambda: FORMAT_VERSION)

    @classmethod
    def build(
        cls,
        split: str,
        codec: str,
        video_ext: str,
        fingerprint: str,
        options: dict[str, Any],
        shards: Iterable[ShardEntry],
        png_bytes: int = 0,
        **rest: Any,
    ) -> Manifest:
        """A manifest whose totals are summed from its shards (``rest``: skipped, versions)."""
        shards = tuple(shards)
        totals = {
            "shards": len(shards),
            "samples": sum(s.samples for s in shards),
            "frames": sum(s.frames for s in shards),
            "bytes": sum(s.bytes for s in shards),
            "png_bytes": png_bytes,
        }
        return cls(split, codec, video_ext, fingerprint, options, shards, totals, **rest)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data (the form :func:`read_manifest` reads)."""
        return {
            "format": f"{FORMAT_NAME}/{self.version}",
            "split": self.split,
            "codec": self.codec,
            "video_ext": self.video_ext,
            "fingerprint": self.fingerprint,
            "options": self.options,
            "shards": [s.to_dict() for s in self.shards],
            "totals": dict(self.totals),
            "skipped": list(self.skipped),
            "versions": self.versions,
        }

    def to_json(self) -> bytes:
        """Deterministic bytes: pretty, key-sorted, strictly valid JSON."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """The one writer of ``manifest.json``: checked by the reader's rules, then written atomically.

    Raises:
        SignstreamError: the manifest breaks the format (never written, so never refused later).
    """
    data = manifest.to_json()
    problems = manifest_problems(json.loads(data))
    if problems:
        raise SignstreamError(f"{path}: not writing a manifest that breaks the format: {'; '.join(problems)}")
    with atomic_write(path, "wb") as f:
        f.write(data)


def read_manifest(source: Any, where: str | None = None) -> Manifest:
    """The strict reader of ``manifest.json``, used wherever a manifest is read.

    Args:
        source: the manifest's path (local, or remote with ``read_bytes``) or its bytes.
        where: the name messages give it (default: the path).

    Raises:
        SignstreamError: one line naming the file and each wrong field (unreadable, not JSON,
            missing or mistyped, a shard name that is a path, a version it does not read).
    """
    where = str(source) if where is None and not isinstance(source, bytes) else (where or "manifest")
    data = parse_manifest_json(source, where)
    problems = manifest_problems(data)
    if problems:
        raise SignstreamError(f"{where}: {'; '.join(problems)}")
    return Manifest(
        data["split"],
        data["codec"],
        data["video_ext"],
        data["fingerprint"],
        data["options"],
        tuple(ShardEntry.from_dict(s) for s in data["shards"]),
        data["totals"],
        tuple(data["skipped"]),
        data["versions"],
        manifest_version(data),
    )


def parse_manifest_json(source: Any, where: str) -> Any:
    """Read (bounded) and parse a manifest's JSON; any JSON value comes back, unchecked.

    Raises:
        SignstreamError: unreadable, oversized or not JSON (one line naming ``where``).
    """
    try:
        raw = source if isinstance(source, bytes) else source.read_bytes()
    except (OSError, ConnectionError) as exc:
        raise SignstreamError(f"cannot read manifest {where}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SignstreamError(f"{where}: {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} a manifest may hold")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise SignstreamError(f"{where}: not a manifest (JSON nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignstreamError(f"{where}: not a readable JSON manifest ({exc})") from None


def manifest_version(data: Any) -> int | None:
    """The format version ``data`` claims (``"signstream-shards/<n>"``), ``None`` if it claims none."""
    tag = data.get("format") if isinstance(data, dict) else None
    name, _, number = tag.partition("/") if isinstance(tag, str) else ("", "", "")
    return int(number) if name == FORMAT_NAME and number.isdigit() and len(number) < 10 else None


def version_problem(data: Any) -> str | None:
    """Why ``data`` is not a manifest of a version this signstream reads (``None``: it is)."""
    if not isinstance(data, dict):
        return f"not a manifest (a JSON {type(data).__name__}, not an object)"
    if "format" not in data:
        return "missing key 'format'"
    version = manifest_version(data)
    readable = ", ".join(map(str, sorted(READABLE_VERSIONS)))
    if version is None:
        return f"'format' is {_short(data['format'])}, not {FORMAT_NAME}/<version>"
    if version > max(READABLE_VERSIONS):
        return (
            f"format version {version} was written by a newer signstream (this one reads {readable}); "
            "upgrade signstream to read it"
        )
    if version not in READABLE_VERSIONS:
        return f"format version {version} is not one this signstream reads ({readable})"
    return None


def manifest_problems(data: Any) -> list[str]:
    """Every way parsed manifest JSON breaks the format, field by field (empty when it keeps it).

    A version this signstream cannot read is the only problem reported: its fields may differ.
    """
    why = version_problem(data)
    if why:
        return [why]
    problems = [f"missing key {k!r}" for k in MANIFEST_FIELDS if k not in data]
    problems += [
        f"{k!r} is not text (got {_short(data[k])})"
        for k in MANIFEST_TEXTS
        if k in data and not isinstance(data[k], str)
    ]
    problems += [f"{k!r} is not an object" for k in MANIFEST_OBJECTS if k in data and not isinstance(data[k], dict)]
    for k in ("shards", "skipped"):
        if k in data and not isinstance(data[k], list):
            problems.append(f"{k!r} is not a list")
    totals = data.get("totals", {})
    if not isinstance(totals, dict):
        problems.append("'totals' is not an object")
    else:
        problems += [
            f"'totals' {k!r} is not a whole number >= 0 (got {_short(totals.get(k))})"
            for k in TOTALS_FIELDS
            if "totals" in data and not _count(totals.get(k))
        ]
    skipped = data.get("skipped") if isinstance(data.get("skipped"), list) else []
    problems += [
        f"skipped entry {i} is not an object with text 'name' and 'reason'"
        for i, row in enumerate(skipped)
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("name", "reason")))
    ]
    shards = data.get("shards") if isinstance(data.get("shards"), list) else []
    for i, entry in enumerate(shards):
        problems += [f"shard entry {i} {p}" for p in shard_entry_problems(entry)]
    return problems


def shard_entry_problems(entry: Any) -> list[str]:
    """Every way one shard entry of a manifest breaks the format."""
    if not isinstance(entry, dict):
        return ["is not an object"]
    missing = [k for k in SHARD_FIELDS if k not in entry]
    problems = [f"lacks {', '.join(missing)}"] if missing else []
    problems += [
        f"has an unusable {k!r}: {_short(entry[k])}"
        for k in ("file", "index")
        if k in entry and not is_plain_name(entry[k])
    ]
    sha = entry.get("sha256")
    if "sha256" in entry and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        problems.append(f"'sha256' is not 64 hex digits (got {_short(sha)})")
    problems += [
        f"{k!r} is not a whole number >= 0 (got {_short(entry[k])})"
        for k in ("samples", "frames", "bytes")
        if k in entry and not _count(entry[k])
    ]
    keys = entry.get("keys")
    if "keys" in entry and not (isinstance(keys, list) and all(isinstance(k, str) and is_key(k) for k in keys)):
        problems.append("'keys' is not a list of sample keys")
    return problems


def is_plain_name(value: Any) -> bool:
    """True for a file name that stays in its directory: no path, no parent reference."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


# ------------------------------------------------------------------ tar files
@dataclass(frozen=True)
class Member:
    """A tar member's place in the file: name, data offset and size.

    ``ext`` is the member's extension: the part of its base name after the
    first dot, unless given (an index line states it, and DALI goes by that).
    """

    name: str
    offset: int
    size: int
    ext: str = None  # type: ignore[assignment]  # None: taken from the name

    def __post_init__(self) -> None:
        if self.ext is None:
            object.__setattr__(self, "ext", split_name(self.name)[1])

    @property
    def key(self) -> str:
        """Sample key: the base name up to its first dot (WebDataset/DALI rule)."""
        return split_name(self.name)[0]


def split_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) at the first dot of the base name."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def tar_member_size(size: int) -> int:
    """Bytes one member of ``size`` data bytes takes in a ustar archive."""
    return BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(path: str | os.PathLike, samples: Iterable[list[tuple[str, bytes]]]) -> list[list[Member]]:
    """Write samples (lists of ``(member_name, data)``) to ``path`` atomically.

    The tar is plain (DALI seeks into it) and its members carry fixed times, owners and modes,
    so the same samples always give the same bytes.

    Returns:
        The members of each sample with their data offsets, for the index.
    """
    # Plain tarfile rather than webdataset's TarWriter: with zeroed metadata the latter is
    # deterministic too, but it reorders the members of a sample (so every shard's bytes and
    # SHA-256 would change) and does not report the data offsets the DALI index needs.
    layout: list[list[Member]] = []
    with atomic_write(path, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                members = []
                for name, data in sample:
                    info = _tarinfo(name, len(data))
                    header = info.tobuf(tar.format, tar.encoding, tar.errors)
                    members.append(Member(name, tar.offset + len(header), len(data)))
                    tar.addfile(info, io.BytesIO(data))
                layout.append(members)
    return layout


def index_text(layout: list[list[Member]]) -> str:
    """Render a DALI v1.2 index: ``v1.2 <n>``, then per sample ``ext offset size name`` per member."""
    lines = [f"{INDEX_VERSION} {len(layout)}"]
    for members in layout:
        for m in members:
            if not m.ext:  # "ext offset size name": an empty extension would shift every field
                raise SignstreamError(f"tar member {m.name!r} has no extension; a DALI index cannot list it")
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return "\n".join(lines) + "\n"


def write_index(path: str | os.PathLike, layout: list[list[Member]]) -> None:
    """Write the DALI index for a shard atomically."""
    with atomic_write(path, "w") as f:
        f.write(index_text(layout))


def read_index(path) -> list[list[Member]]:
    """Read a DALI v1.2 index (the inverse of :func:`write_index`): the members of each sample.

    ``path`` is a local path or anything with ``read_text`` (a remote path).
    Each member's ``ext`` is the one the index line gives.

    Raises:
        SignstreamError: an unreadable file, a header that is not ``v1.2 <n>``,
            a line that is not ``ext offset size name`` groups of integers, or
            a sample count that disagrees with the header (naming file and line).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SignstreamError(f"cannot read index {path}: {exc.strerror}") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise SignstreamError(f"{path} is not a DALI v1.2 index (first line {lines[:1]})")
    layout = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        tokens = line.split()
        if len(tokens) % 4:
            raise SignstreamError(f"{path}:{lineno}: expected 'ext offset size name' groups")
        try:
            layout.append(
                [
                    Member(tokens[i + 3], int(tokens[i + 1]), int(tokens[i + 2]), tokens[i])
                    for i in range(0, len(tokens), 4)
                ]
            )
        except ValueError:
            raise SignstreamError(f"{path}:{lineno}: offsets and sizes must be integers") from None
    if len(layout) != int(head[1]):
        raise SignstreamError(f"{path}: header says {head[1]} samples, found {len(layout)} lines")
    return layout


def scan_tar(path: str | os.PathLike) -> list[list[Member]]:
    """Read a tar's regular members and group consecutive ones by key.

    Mirrors how DALI's ``wds2idx`` groups members, so ``index_text(scan_tar(p))``
    is what the index beside ``p`` must contain. Raises ``tarfile.TarError`` on
    a damaged archive.
    """
    layout, error = read_layout(path)
    if error is not None:
        raise error
    return layout


def read_layout(
    path: str | os.PathLike, fileobj: IO[bytes] | None = None
) -> tuple[list[list[Member]], tarfile.TarError | None]:
    """Like :func:`scan_tar`, but a damaged archive gives what was read before the damage.

    Args:
        path: the tar file.
        fileobj: read the tar from this sequential stream instead (a remote
            shard streamed once; the caller closes it).

    Returns:
        ``(layout, error)``: the samples found, and the ``tarfile`` error that
        stopped the scan (``None`` when the whole archive read cleanly). A tar
        cut inside a member keeps that member with its recorded size.
    """
    infos: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(path, mode="r:") if fileobj is None else tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                infos.append(info)
    except tarfile.TarError as exc:
        return group_members(infos), exc
    return group_members(infos), None


def group_members(infos: Iterable[tarfile.TarInfo]) -> list[list[Member]]:
    """Group a tar's regular members into samples by key, as ``wds2idx`` does (see :func:`scan_tar`).

    Consecutive members with the same key form one sample. Members whose key is
    empty or ends in ``/`` (hidden files such as ``._x.webm``) are left out; a
    member without an extension is kept (its key is its whole name).
    """
    layout: list[list[Member]] = []
    last_key = None
    for info in infos:
        if not info.isreg():
            continue
        member = Member(info.name, info.offset_data, info.size)
        if not member.key or member.key.endswith("/"):
            continue
        if member.key != last_key:
            layout.append([member])
            last_key = member.key
        else:
            layout[-1].append(member)
    return layout


def iter_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: data})`` for each sample of a shard, in order."""
    with open(path, "rb") as f:
        for members in scan_tar(path):
            data = {}
            for m in members:
                f.seek(m.offset)
                data[m.ext] = f.read(m.size)
            yield members[0].key, data


def read_json_members(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the parsed ``.json`` member of each sample of a shard (videos are not read).

    Raises :class:`MetaError` (a ``ValueError``) on a member :func:`read_sample_meta` refuses.
    """
    with open(path, "rb") as f:
        for members in scan_tar(path):
            for m in members:
                if m.ext == "json":
                    f.seek(m.offset)
                    # read one byte past the cap at most: the size check needs no more
                    yield read_sample_meta(f.read(min(m.size, MAX_JSON_BYTES + 1)), m.key)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def index_path_for(tar_path: str | os.PathLike) -> Path:
    """The index file that sits beside a shard: ``x-000000.tar`` → ``x-000000.idx``."""
    return Path(tar_path).with_suffix(".idx")
