"""``make_loader``: one call for every backend.

>>> loader = make_loader("shards/dev", backend="pyav", batch_size=4,
...                      transform=Transform(size=224, normalize="kinetics"))
>>> for batch in loader:           # Batch(video [B,C,T,H,W], lengths, keys, meta)
...     ...
>>> print(loader.stats.summary())  # samples, frames, padding, skipped (key, shard, reason)

Backends are a dict of builder functions (:data:`BACKENDS`, looked up with
:func:`signstream.lookup`);
DALI is imported only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from signstream import SignstreamError, lookup
from signstream.loaders.base import BaseLoader, default_workers, process_rank_world
from signstream.loaders.shards import resolve_shards
from signstream.loaders.transform import Transform


def _build_pyav(source: Any, common: dict[str, Any], options: dict[str, Any]) -> BaseLoader:
    from signstream.loaders.pyav_backend import PyAVLoader

    return PyAVLoader(resolve_shards(source), num_workers=options.pop("num_workers"), **options, **common)


def _build_dali(source: Any, common: dict[str, Any], options: dict[str, Any]) -> BaseLoader:
    from signstream.loaders.dali_backend import DaliLoader

    return DaliLoader(resolve_shards(source), **options, **common)


def _build_pngdir(source: Any, common: dict[str, Any], options: dict[str, Any]) -> BaseLoader:
    from signstream.loaders.pngdir import PngDirLoader, corpus_items

    split = options.pop("split", None)
    layout = options.pop("layout", None)
    items = corpus_items(source, split=split, layout=layout)
    return PngDirLoader(items, num_workers=options.pop("num_workers"), **options, **common)


# options each backend accepts beyond make_loader's named arguments
OPTIONS = {"pyav": {"bucket", "decode_threads"}, "dali": {"bucket", "batches_per_run", "decoder_threads", "postprocess"},
           "pngdir": {"split", "layout"}}

BACKENDS: dict[str, Callable[[Any, dict[str, Any], dict[str, Any]], BaseLoader]] = {
    "pyav": _build_pyav,
    "dali": _build_dali,
    "pngdir": _build_pngdir,
}


def make_loader(source: str | os.PathLike | list | Any, *, backend: str = "auto", device: str = "cpu",
                batch_size: int = 1, transform: Transform | None = None, mode: str = "eval",
                shuffle: bool | None = None, seed: int = 0, num_workers: int | None = None,
                handler: str = "warn", rank: int | None = None, world_size: int | None = None,
                **options: Any) -> BaseLoader:
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
        **options: backend options (see :data:`OPTIONS`): ``bucket``
            (length-bucketing buffer in batches, 0 = off; shard backends),
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
    if backend == "auto":
        backend = "dali" if str(device).startswith("cuda") else "pyav"
    build = lookup(BACKENDS, backend, "loader backend (or auto)")
    options = {k: v for k, v in options.items() if v is not None}  # None: the backend's default
    unknown = sorted(set(options) - OPTIONS[backend])
    if unknown:
        raise SignstreamError(f"backend {backend!r} does not take option(s) {', '.join(unknown)} "
                              f"(it takes: {', '.join(sorted(OPTIONS[backend])) or 'none'})")
    rank, world = process_rank_world(rank, world_size)
    common = {"transform": transform or Transform(), "device": device, "mode": mode,
              "batch_size": batch_size, "seed": seed, "handler": handler, "rank": rank, "world": world,
              "shuffle": (mode == "train") if shuffle is None else bool(shuffle)}
    options["num_workers"] = default_workers() if num_workers is None else int(num_workers)
    return build(source, common, options)
