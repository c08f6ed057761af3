"""The shard format: sample keys.

Every sample of a pack is named by a *key*: WebDataset and DALI split member
names at the first dot, and corpus names may hold dots, slashes or repeat, so
the key is the corpus name with every character outside ``[A-Za-z0-9_-]``
replaced by ``_``, cut to :data:`KEY_MAX` characters, and made unique within a
split by a ``_2``, ``_3``… suffix in table order. The original name stays in the
sample's JSON. Pack, the PNG-folder loader and the feature files all name
samples with these functions, so one corpus gives the same keys everywhere (and
so the same per-sample augmentation streams).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KEY_MAX = 80
KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def sample_key(name: str) -> str:
    """The key of one corpus name, before de-duplication (``"a.b/c"`` → ``"a_b_c"``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:KEY_MAX] or "sample"


def make_keys(names: Iterable[str]) -> list[str]:
    """Dot-free, unique keys for corpus names, in order (the second ``a.b`` becomes ``a_b_2``)."""
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
