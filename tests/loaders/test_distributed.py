"""Two real processes under ``accelerate launch``: exactly-once eval, equal train batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from signstream.loaders.shards import resolve_shards

pytest.importorskip("nvidia.dali")


@pytest.mark.slow
def test_two_processes_split_eval_exactly_once_and_train_equally(corpus, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate launcher not installed next to this Python")
    out = tmp_path / "ranks"
    # --multi_gpu starts 2 torchrun workers; on a CUDA-less box the loaders'
    # PartialState(cpu=True) turns them into a MULTI_CPU (gloo) group.
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(Path(__file__).with_name("dist_check.py")),
        str(corpus["vp9"]),
        str(corpus["root"]),
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    every = sorted(ref.key for ref in resolve_shards(corpus["vp9"]).refs)
    for backend in ("pyav", "dali", "pngdir"):
        for epoch in range(2):
            seen = [k for r in ranks for batch in r[f"{backend}-eval"][epoch] for k in batch]
            assert sorted(seen) == every, (backend, epoch)
            counts = [len(r[f"{backend}-train"][epoch]) for r in ranks]
            assert counts[0] == counts[1] == (7 // 2) // 2, (backend, epoch, counts)
