"""signstream.loaders: shards (or PNG folders) in, normalised video batches out.

Public API, imported lazily (``signstream.loaders.fileio`` stays light): ``make_loader``, ``Transform``, ``Batch``,
``LoaderStats``, ``resolve_shards``, ``NORMALIZATIONS``, ``WINDOWS`` and the backend registry. Modules (roles:
docs/design/loaders.md): ``api``; shared ``base``, ``stages``, ``transform``, ``batch``, ``stats``; shards ``format``,
``shards``, ``corpora``, ``remote``, ``nvdec``; backends ``pyav_backend``, ``pngdir``, ``dali_backend``,
``dali_pipeline``, ``dali_stream``, ``dali_copy``, ``dali_opencv``, ``dali_startup``; outputs ``fileio``, ``outputs``,
``ownership``, ``feature_writers``, ``feature_readers``; host ``cpu``, ``memory``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_loader": "signstream.loaders.api",
    "BACKENDS": "signstream.loaders.api",
    "Backend": "signstream.loaders.api",
    "register_backend": "signstream.loaders.api",
    "get_backend": "signstream.loaders.api",
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
