"""Deterministic WebDataset tar shards and their DALI index files.

Shards are plain (uncompressed) tars so DALI can seek into them; members carry
fixed mtimes, owners and modes so the same samples always give the same bytes.
The index format is the one DALI's ``wds2idx`` writes ("v1.2"): a header line
``v1.2 <num_samples>`` then one line per sample with ``ext offset size name``
for each member, offsets pointing at the member's data (after its header).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from signstream.loaders.fileio import atomic_write

INDEX_VERSION = "v1.2"
BLOCK = 512


@dataclass(frozen=True)
class Member:
    """A tar member's place in the file: name, data offset and size."""

    name: str
    offset: int
    size: int

    @property
    def key(self) -> str:
        """Sample key: the base name up to its first dot (WebDataset/DALI rule)."""
        return split_name(self.name)[0]

    @property
    def ext(self) -> str:
        return split_name(self.name)[1]


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

    Returns:
        The members of each sample with their data offsets, for the index.
    """
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
    """Render a DALI v1.2 index for samples laid out as ``layout``."""
    lines = [f"{INDEX_VERSION} {len(layout)}"]
    for members in layout:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return "\n".join(lines) + "\n"


def write_index(path: str | os.PathLike, layout: list[list[Member]]) -> None:
    """Write the DALI index for a shard atomically."""
    with atomic_write(path, "w") as f:
        f.write(index_text(layout))


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


def read_layout(path: str | os.PathLike) -> tuple[list[list[Member]], tarfile.TarError | None]:
    """Like :func:`scan_tar`, but a damaged archive gives what was read before the damage.

    Returns:
        ``(layout, error)``: the samples found, and the ``tarfile`` error that
        stopped the scan (``None`` when the whole archive read cleanly).
    """
    infos: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                infos.append(info)
    except tarfile.TarError as exc:
        return group_members(infos), exc
    return group_members(infos), None


def group_members(infos: Iterable[tarfile.TarInfo]) -> list[list[Member]]:
    """Group a tar's regular members into samples by key, as ``wds2idx`` does (see :func:`scan_tar`)."""
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

    Raises ``ValueError`` on a member that is not valid UTF-8 JSON.
    """
    with open(path, "rb") as f:
        for members in scan_tar(path):
            for m in members:
                if m.ext == "json":
                    f.seek(m.offset)
                    yield json.loads(f.read(m.size).decode("utf-8"))


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
