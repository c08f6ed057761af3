"""Two machines x one process on this box (``accelerate launch --num_machines 2``, both
ranks started here): extraction equals a one-process run with every video once, and
fine-tuning runs the same steps to identical weights on both machines. The shards
come from a local HTTP server, as they would from shared storage on a cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

EXTRACT = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "writers=npy,signjoey",
    "dtype=float32",
    "progress=false",
    "seed=3",
    "splits=dev,test",
]
FINETUNE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "max_frames=16",
    "batch_size=1",
    "num_workers=0",
    "head=linear",
    "lr=3e-3",
    "backbone_lr=3e-3",
    "warmup_steps=1",
    "freeze=2",
    "seed=1",
    "epochs=1",
    "max_steps_per_epoch=2",
    "dev_split=test",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # one thread everywhere: the same float summation order in every process
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def one_process(module: str, args: list[str], timeout: float = 600) -> None:
    """Run ``module`` as a single process under ``accelerate launch`` (asserts success)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        module,
        *args,
    ]
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:]


def two_machines(module: str, args: list[str], logs: Path, timeout: float = 600) -> None:
    """Run ``module`` as 2 machines x 1 process on 127.0.0.1 (asserts both succeed).

    If one machine fails, the other is stopped at once instead of waiting for
    its peer until the timeout.
    """
    port = _free_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in (0, 1):
        # --multi_gpu picks torchrun; without CUDA the recipes' Accelerator(cpu=True) joins over gloo
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_machines",
            "2",
            "--num_processes",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            module,
            *args,
        ]
        with open(logs / f"machine{rank}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, proc in enumerate(procs):
        tail = (logs / f"machine{rank}.log").read_text()[-3000:]
        assert proc.returncode == 0, f"machine {rank} (exit {proc.returncode}):\n{tail}"


def _outputs(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.glob("*/*.npy"))}


@pytest.mark.slow
def test_two_machine_extraction_equals_one_process_with_every_video_once(packed, http_packed, tmp_path):
    one = tmp_path / "one"
    one_process("signstream.recipes.extract_features", [f"shards={packed}", f"out={one}", *EXTRACT])
    two = tmp_path / "two"
    two_machines(
        "signstream.recipes.extract_features", [f"shards={http_packed}", f"out={two}", *EXTRACT], tmp_path / "logs"
    )
    a, b = _outputs(one), _outputs(two)
    expected = sum(
        json.loads((packed / split / "manifest.json").read_text())["totals"]["samples"] for split in ("dev", "test")
    )
    assert a.keys() == b.keys() and len(a) == expected
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2
    assert sum(s["videos"] for s in summary["splits"].values()) == expected  # each video once
    assert all(s["resumed"] == 0 and not s["skipped"] for s in summary["splits"].values())
    assert (two / "glosses.txt").read_bytes() == (packed / "glosses.txt").read_bytes()


@pytest.mark.slow
def test_two_machine_finetuning_runs_equal_steps_to_identical_weights(http_packed, tmp_path):
    out = tmp_path / "ft"
    two_machines(
        "signstream.recipes.finetune_ctc", [f"shards={http_packed}", f"out={out}", *FINETUNE], tmp_path / "logs"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    replicas = metrics["replicas"]
    assert [r["rank"] for r in replicas] == [0, 1]
    assert replicas[0]["steps"] == replicas[1]["steps"] == 2
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    saved = load_file(str(out / "model.safetensors"))
    assert saved and _digest_of(saved) == replicas[0]["weights_sha256"]


def test_weights_digest_is_equal_for_equal_weights_and_changes_with_one_value():
    import torch

    from signstream.recipes.replicas import weights_digest

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert weights_digest(a) != weights_digest(b)


def _digest_of(state: dict) -> str:
    from signstream.recipes.replicas import weights_digest

    class Holder:
        def state_dict(self):
            return state

    return weights_digest(Holder())
