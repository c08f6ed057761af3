"""Feature readers: load extracted features back for head training.

Reads every format extraction writes (npy store, SignJoey pickles, zstd feature shards) into
:class:`FeatureSample` lists; :func:`load_split` picks a reader from :data:`READERS` or detects
the format. Invariant: a pickle may only rebuild plain data and tensors (:class:`FeatureUnpickler`);
any other global is refused before it is called. Why: docs/design/feature-files.md
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signstream import SignstreamError


@dataclass
class FeatureSample:
    """One video's features ``[T', D]`` and its labels."""

    name: str
    gloss: str
    features: np.ndarray
    signer: str = ""
    text: str = ""


INDEX_FILE = "features.index.json"  # written by signstream.loaders.feature_writers


def read_npy(root: Path, split: str) -> list[FeatureSample]:
    """The per-video ``.npy`` store indexed by ``<root>/<split>/features.index.json``."""
    index = root / split / INDEX_FILE
    try:
        videos = json.loads(index.read_text())["videos"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignstreamError(f"{index}: not a feature index ({type(exc).__name__}: {exc})") from None
    out = []
    for m in videos:
        path = root / split / m["file"]
        if not path.exists():
            raise SignstreamError(f"{index} lists {m['file']}, which is missing")
        out.append(FeatureSample(m["name"], m.get("gloss", ""), np.load(path), m.get("signer", ""), m.get("text", "")))
    return out


def _safe_load_from_bytes(data: bytes):
    # torch pickles a storage as a nested torch.save; read that with torch's own safe loader
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy object arrays")
    return dtype


def _allowed_globals() -> dict[tuple[str, str], object]:
    import collections

    import torch

    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("_codecs", "encode"): __import__("codecs").encode,  # bytes, as protocol 2 writes them
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numpy_dtype,
    }
    core_mod = getattr(np, "_core", None) or np.core
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spell the module differently
        allowed[(f"{core}.multiarray", "_reconstruct")] = core_mod.multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = core_mod.multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = core_mod.numeric._frombuffer
    return allowed


class FeatureUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, strings, numbers, tensors and plain arrays."""

    def find_class(self, module: str, name: str):
        found = _allowed_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return found


def load_pickle(path: Path):
    """Load a (gzip-compressed or plain) pickle with :class:`FeatureUnpickler`.

    Raises:
        SignstreamError: the file asks for anything but data, or cannot be read.
    """
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            return FeatureUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise SignstreamError(
            f"refusing to load {path}: not a plain feature file ({exc}); "
            "only lists, dicts, strings, numbers and tensors are read"
        ) from None
    except Exception as exc:  # any failure of the deserializer means a file we cannot use
        raise SignstreamError(
            f"cannot read {path} as a SignJoey feature file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _signjoey_sample(path: Path, e) -> FeatureSample:
    import torch

    if not isinstance(e, dict) or "name" not in e or "sign" not in e:
        raise SignstreamError(f"{path}: expected a list of dicts with 'name' and 'sign'")
    sign = e["sign"].numpy() if isinstance(e["sign"], torch.Tensor) else e["sign"]
    features = np.asarray(sign, dtype=np.float32)
    if features.ndim != 2:
        raise SignstreamError(f"{path}: entry {e['name']!r} has features of shape {features.shape}, not [T, D]")
    return FeatureSample(
        str(e["name"]), str(e.get("gloss") or ""), features, str(e.get("signer") or ""), str(e.get("text") or "")
    )


def read_signjoey(root: Path, split: str) -> list[FeatureSample]:
    """A SignJoey gzip pickle ``<root>/<prefix>.<split>`` (exactly one must match), loaded safely."""
    files = sorted(p for p in root.glob(f"*.{split}") if p.is_file())
    if len(files) != 1:
        raise SignstreamError(f"expected one SignJoey file *.{split} in {root}, found {len(files)}")
    entries = load_pickle(files[0])
    if not isinstance(entries, list):
        raise SignstreamError(f"{files[0]}: expected a list of dicts, found {type(entries).__name__}")
    return check_shapes([_signjoey_sample(files[0], e) for e in entries], str(files[0]))


def check_shapes(samples: list[FeatureSample], where: str) -> list[FeatureSample]:
    """``samples``, once each is a non-empty ``[T, D]`` array and all share one width ``D``.

    A head is built for one feature width and CTC needs at least one step, so
    an empty entry or a second width (a file merged from two extractors) is
    refused here, naming the entry and ``where`` it is, not deep in training.

    Raises:
        SignstreamError: the first entry that breaks either rule.
    """
    for s in samples:
        if s.features.ndim != 2:
            raise SignstreamError(f"{where}: entry {s.name!r} has features of shape {s.features.shape}, not [T, D]")
        if s.features.shape[0] == 0 or s.features.shape[1] == 0:
            raise SignstreamError(
                f"{where}: entry {s.name!r} has features of shape {s.features.shape} "
                "(no frames or no channels); remove it or extract it again"
            )
    first = samples[0] if samples else None
    for s in samples:
        if s.features.shape[1] != first.features.shape[1]:
            raise SignstreamError(
                f"{where}: entry {s.name!r} has {s.features.shape[1]}-wide features but "
                f"entry {first.name!r} has {first.features.shape[1]}; one split must come "
                "from one backbone"
            )
    return samples


def read_shards(root: Path, split: str) -> list[FeatureSample]:
    """zstd feature shards ``<root>/feature-shards/<split>/*.tar``."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    out = []
    for tar_path in sorted((root / "feature-shards" / split).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        for parts in members.values():
            meta = json.loads(parts["json"])
            feats = np.load(io.BytesIO(dctx.decompress(parts["npy.zst"])))
            out.append(
                FeatureSample(meta["name"], meta.get("gloss", ""), feats, meta.get("signer", ""), meta.get("text", ""))
            )
    return sorted(out, key=lambda s: s.name)


READERS: dict[str, Callable[[Path, str], list[FeatureSample]]] = {
    "npy": read_npy,
    "signjoey": read_signjoey,
    "shards": read_shards,
}


def detect_format(root: Path, split: str) -> str:
    """Which writer produced ``root`` for ``split`` (npy preferred, then shards, then SignJoey)."""
    if (root / split / INDEX_FILE).exists():
        return "npy"
    if list((root / "feature-shards" / split).glob("*.tar")):
        return "shards"
    if list(root.glob(f"*.{split}")):
        return "signjoey"
    raise SignstreamError(
        f"no features for split {split!r} in {root} "
        "(expected <split>/features.index.json, feature-shards/<split>/ or <prefix>.<split>)"
    )


def load_split(root: str | Path, split: str, fmt: str = "auto") -> list[FeatureSample]:
    """Load one split's features; ``fmt`` is ``auto`` or a key of :data:`READERS`."""
    root = Path(root)
    if not root.is_dir():
        raise SignstreamError(f"features directory not found: {root}")
    fmt = detect_format(root, split) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise SignstreamError(f"unknown feature format {fmt!r}; choose from auto, {', '.join(READERS)}")
    samples = READERS[fmt](root, split)
    if not samples:
        raise SignstreamError(f"split {split!r} in {root} has no feature files")
    return check_shapes(samples, f"{root} split {split!r} ({fmt})")
