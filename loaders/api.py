"""``make_loader``: one call for every backend, and the registry of backends.

>>> loader = make_loader("shards/dev", backend="pyav", batch_size=4, transform=Transform(size=224))
>>> batch = next(iter(loader))      # Batch(video [B,C,T,H,W], lengths, keys, meta)
>>> print(loader.stats.summary())  # samples, frames, padding, skipped (key, shard, reason)

Each backend is one :class:`Backend` record in :data:`BACKENDS` (``register_backend`` adds one); builders import
their backend lazily, so the CPU chain runs without DALI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from signstream import SignstreamError, lookup
from signstream.loaders.base import BaseLoader, default_workers, process_rank_world
from signstream.loaders.shards import resolve_shards
from signstream.loaders.transform import Transform

Builder = Callable[[Any, dict[str, Any], dict[str, Any]], BaseLoader]


@dataclass(frozen=True)
class Backend:
    """A loader backend: how to build it and what callers may rely on.

    Attributes:
        name: the ``backend=`` name.
        build: ``build(source, common, options) -> loader``; ``common`` holds make_loader's named
            arguments, ``options`` the backend options plus ``num_workers``.
        options: backend options it accepts beyond make_loader's named arguments.
        reads_shards: its source is shards (else e.g. a corpus of frame folders).
        reads_whole_shards: it cannot read a subset of a shard's samples (resuming keeps whole shards).
        devices: where it decodes (``cpu``, ``cuda``).
    """

    name: str
    build: Builder
    options: frozenset[str] = frozenset()
    reads_shards: bool = True
    reads_whole_shards: bool = False
    devices: tuple[str, ...] = ("cpu",)


# The registry, by name; RECIPE_BACKENDS: the shard backends plus ``auto`` (the recipes' choice).
BACKENDS: dict[str, Backend] = {}
RECIPE_BACKENDS: dict[str, Backend | None] = {"auto": None}


def register_backend(
    name: str,
    build: Builder,
    *,
    options: set[str] | frozenset[str] = frozenset(),
    reads_shards: bool = True,
    reads_whole_shards: bool = False,
    devices: tuple[str, ...] = ("cpu",),
) -> Backend:
    """Register (or replace) a backend under ``name``; returns its record."""
    if name == "auto":
        raise SignstreamError("'auto' is make_loader's choice of backend, not a backend name")
    record = Backend(name, build, frozenset(options), reads_shards, reads_whole_shards, tuple(devices))
    BACKENDS[name] = record
    RECIPE_BACKENDS.pop(name, None)
    if reads_shards:
        RECIPE_BACKENDS[name] = record
    return record


def get_backend(name: str, device: str = "cpu") -> Backend:
    """The record of backend ``name``; ``auto`` is DALI on CUDA, PyAV on the CPU."""
    if name == "auto":
        name = "dali" if str(device).startswith("cuda") else "pyav"
    return lookup(BACKENDS, name, "loader backend (or auto)")


def _build_pyav(source: Any, common: dict[str, Any], options: dict[str, Any]) -> BaseLoader:
    from signstream.loaders.pyav_backend import PyAVLoader

    return PyAVLoader(resolve_shards(source), num_workers=options.pop("num_workers"), **options, **common)


def _build_dali(source: Any, common: dict[str, Any], options: dict[str, Any]) -> BaseLoader:
    from signstream.loaders.dali_backend import DaliLoader, require_dali  # imports without DALI

    require_dali()  # before resolving shards (which may list a bucket): name the extra to install
    return DaliLoader(resolve_shards(source), **options, **common)


def _build_pngdir(source: Any, common: dict[str, Any], options: dict[str, Any]) -> BaseLoader:
    from signstream.loaders.pngdir import PngDirLoader, corpus_items

    split = options.pop("split", None)
    layout = options.pop("layout", None)
    items = corpus_items(source, split=split, layout=layout)
    return PngDirLoader(items, num_workers=options.pop("num_workers"), **options, **common)


register_backend("pyav", _build_pyav, options={"bucket", "decode_threads"})
register_backend(
    "dali",
    _build_dali,
    options={"bucket", "batches_per_run", "decoder_threads", "postprocess"},
    devices=("cpu", "cuda"),
)
register_backend("pngdir", _build_pngdir, options={"split", "layout", "bucket"}, reads_shards=False)


def make_loader(
    source: str | os.PathLike | list | Any,
    *,
    backend: str = "auto",
    device: str = "cpu",
    batch_size: int = 1,
    transform: Transform | None = None,
    mode: str = "eval",
    shuffle: bool | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    handler: str = "warn",
    rank: int | None = None,
    world_size: int | None = None,
    allow_empty: bool = False,
    **options: Any,
) -> BaseLoader:
    """Build a loader; iterate it for :class:`~signstream.loaders.batch.Batch` es.

    Args:
        source: shards — a split directory, a ``manifest.json``, a brace pattern
            or a list of ``.tar`` paths; for ``pngdir`` a PHOENIX corpus root
            (with ``split=``) or a list of ``(name, frame_dir)`` pairs.
        backend: ``dali``, ``pyav``, ``pngdir``, or ``auto`` (DALI on CUDA,
            PyAV on CPU).
        device: ``cpu`` or ``cuda`` (where batches are delivered; DALI decodes
            there with NVDEC).
        batch_size: samples per batch.
        transform: the shared :class:`Transform` (default: ``Transform()``).
        mode: ``eval`` (every sample once over all ranks, centre crops) or
            ``train`` (equal batch counts on every rank, random augmentation).
        shuffle: shuffle samples (default: ``mode == "train"``); deterministic
            for a ``seed`` and epoch.
        seed: seed of shuffling and augmentation.
        num_workers: worker processes (PyAV, pngdir), or DALI's decoder threads
            on the CPU; default: the CPU cores, at most 8. DALI on CUDA ignores it
            (see ``decoder_threads``).
        handler: bad-sample policy: ``warn``, ``skip`` or ``raise``.
        rank: this process's index (default: from Accelerate, else 0).
        world_size: process count (default: from Accelerate, else 1).
        allow_empty: end an epoch quietly when every sample it read was skipped
            (callers that check across ranks themselves, like the recipes);
            by default such an epoch raises one line naming the first reasons.
        **options: backend options (see ``BACKENDS[name].options``): ``bucket``
            (length-bucketing buffer in batches, 0 = off),
            ``decode_threads`` (PyAV threads per video), ``batches_per_run``
            (user batches per DALI iteration; CUDA default: 2 clips per
            decoder thread, so every thread stays busy), ``decoder_threads``
            (DALI's threads; CUDA default: this process's share of the host's
            cores, at most 8, because NVDEC decodes one clip per thread and the
            recipes' ``num_workers=1`` would feed it one clip at a time),
            ``postprocess`` (DALI on the CPU: ``opencv`` or ``dali``
            operators), ``split`` and ``layout`` (pngdir). An option given as
            ``None`` means its default.

    Raises:
        SignstreamError: missing shard or empty split, H.264 shards with DALI
            on CPU, CUDA asked for but absent, bad options.
    """
    record = get_backend(backend, device)
    options = {k: v for k, v in options.items() if v is not None}  # None: the backend's default
    unknown = sorted(set(options) - record.options)
    if unknown:
        raise SignstreamError(
            f"backend {record.name!r} does not take option(s) {', '.join(unknown)} "
            f"(it takes: {', '.join(sorted(record.options)) or 'none'})"
        )
    rank, world = process_rank_world(rank, world_size)
    common = {
        "transform": transform or Transform(),
        "device": device,
        "mode": mode,
        "batch_size": batch_size,
        "seed": seed,
        "handler": handler,
        "rank": rank,
        "world": world,
        "shuffle": (mode == "train") if shuffle is None else bool(shuffle),
        "allow_empty": allow_empty,
    }
    options["num_workers"] = default_workers() if num_workers is None else int(num_workers)
    return record.build(source, common, options)
