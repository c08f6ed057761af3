"""What every process of a multi-process (or multi-machine) run did, side by side.

Data-parallel training keeps one replica of the model per process; if the
replicas drift apart (a rank that ran fewer steps, a missed all-reduce) the
saved checkpoint, taken from the main process, silently stops describing the
others. :func:`replica_report` gathers, from every rank, its host, the steps it
ran and a SHA-256 of its model weights, so ``metrics.json`` shows at a glance
that all machines did the same work and ended with the same weights.
"""

from __future__ import annotations

import hashlib
import socket

import torch
from accelerate.utils import gather_object


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and values, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN counters) too
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def replica_report(accelerator, model: torch.nn.Module, steps: int) -> list[dict]:
    """One record per process, in rank order: rank, host, steps run, weights digest (collective)."""
    mine = {
        "rank": accelerator.process_index,
        "host": socket.gethostname(),
        "steps": int(steps),
        "weights_sha256": weights_digest(accelerator.unwrap_model(model)),
    }
    return sorted(gather_object([mine]), key=lambda r: r["rank"])
