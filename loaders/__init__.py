"""signstream.loaders: shards (or PNG folders) in, normalised video batches out.

Public API (imported lazily, so ``signstream.loaders.fileio`` stays light)::

    make_loader(source, *, backend="auto"|"dali"|"pyav"|"pngdir", device, batch_size,
                transform, mode, shuffle, seed, num_workers, ...) -> loader
    Transform, Batch, LoaderStats, resolve_shards, NORMALIZATIONS, WINDOWS

Modules: ``api`` (make_loader), ``transform`` (shared preprocessing and
sampling plans), ``batch`` (Batch, padding, bucketing, normalisation),
``format`` (the shard format: keys, members, manifest, tar and index files),
``corpora`` (corpus tables), ``shards`` (resolving and reading shards),
``pyav_backend``, ``dali_backend``, ``pngdir`` (PNG-folder baseline),
``stats`` (loader.stats, bad-sample policies), ``base`` (epochs, ranks, equal
train batches), ``feature_writers`` / ``feature_readers`` (feature files),
``fileio`` (atomic writes).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_loader": "signstream.loaders.api",
    "BACKENDS": "signstream.loaders.api",
    "Transform": "signstream.loaders.transform",
    "NORMALIZATIONS": "signstream.loaders.transform",
    "WINDOWS": "signstream.loaders.transform",
    "Batch": "signstream.loaders.batch",
    "LoaderStats": "signstream.loaders.stats",
    "resolve_shards": "signstream.loaders.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'signstream.loaders' has no attribute {name!r}")
