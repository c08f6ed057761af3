"""Run by test_distributed.py under ``accelerate launch --multi_gpu --num_processes 2``.

Each rank iterates every backend in eval and train mode (ranks come from
Accelerate's state inside ``make_loader``) and writes what it saw to
``OUT/rank<r>.json``: the keys of every batch of two epochs.

Usage: dist_check.py SPLIT_DIR PNG_ROOT OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from signstream.loaders import Transform, make_loader


def main() -> None:
    split, png_root, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sources = {"pyav": (split, {}), "dali": (split, {}), "pngdir": (png_root, {"split": "dev"})}
    result, rank, world = {}, None, None
    for backend, (source, extra) in sources.items():
        for mode in ("eval", "train"):
            loader = make_loader(
                source,
                backend=backend,
                batch_size=2,
                transform=Transform(size=32),
                mode=mode,
                num_workers=1,
                seed=5,
                **extra,
            )
            rank, world = loader.rank, loader.world
            # two epochs; each a list of batches, each a list of keys
            result[f"{backend}-{mode}"] = [[batch.keys for batch in loader] for _ in range(2)]
    # a collective after the loops: it would hang if the ranks disagreed on the work
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, **result}))


if __name__ == "__main__":
    main()
