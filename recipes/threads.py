"""CPU thread policy shared by the recipes and the demo.

Each process gets its share of the cores it may run on,
``max(1, cores // local_processes - loader_workers)``, unless the recipe's ``threads=`` key
or ``OMP_NUM_THREADS`` says otherwise; the decision is printed once per machine.
Why: docs/design/threads.md
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from signstream.loaders.cpu import LOCAL_SIZE_VARS, available_cores, local_processes, positive_int

__all__ = ["LOCAL_SIZE_VARS", "ThreadPlan", "apply_thread_policy", "local_processes", "plan_threads"]


@dataclass(frozen=True)
class ThreadPlan:
    """How many intra-op threads a process uses, and why."""

    threads: int
    source: str  # "config", "OMP_NUM_THREADS" or "policy"
    cores: int
    local_processes: int
    workers: int

    def describe(self) -> str:
        """One log line, e.g. ``torch threads: 1 (policy: 2 cores / 1 process - 1 loader worker)``."""
        if self.source != "policy":
            return f"torch threads: {self.threads} (set by {self.source}; {self.cores} cores available)"
        procs = f"{self.local_processes} process{'es' if self.local_processes != 1 else ''}"
        workers = f"{self.workers} loader worker{'s' if self.workers != 1 else ''}"
        return f"torch threads: {self.threads} (policy: {self.cores} cores / {procs} - {workers})"


def plan_threads(
    cores: int,
    local_processes: int = 1,
    workers: int = 0,
    env: Mapping[str, str] | None = None,
    configured: int | None = None,
) -> ThreadPlan:
    """Decide the torch thread count of one process (a pure function).

    Args:
        cores: CPUs this process may run on.
        local_processes: ranks sharing those CPUs (processes on this machine).
        workers: loader worker processes this rank starts (each counted as one busy core).
        env: environment to read ``OMP_NUM_THREADS`` from (``os.environ`` when None).
        configured: the recipe's ``threads`` key; ``None`` or 0 means "decide for me".

    Returns:
        The plan: thread count, where it came from, and the inputs.
    """
    env = os.environ if env is None else env
    cores, procs, workers = max(1, int(cores)), max(1, int(local_processes)), max(0, int(workers))
    if configured:
        return ThreadPlan(max(1, int(configured)), "config", cores, procs, workers)
    from_env = positive_int(env.get("OMP_NUM_THREADS"))
    if from_env is not None:
        return ThreadPlan(from_env, "OMP_NUM_THREADS", cores, procs, workers)
    return ThreadPlan(max(1, cores // procs - workers), "policy", cores, procs, workers)


def apply_thread_policy(configured: int | None = None, workers: int = 0, log=None) -> ThreadPlan:
    """Plan this process's threads, apply them to torch, and log the decision once.

    Call it at the top of a recipe's ``main``, before any tensor work.
    """
    import torch

    plan = plan_threads(available_cores(), local_processes(), workers, configured=configured)
    torch.set_num_threads(plan.threads)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # one line per machine, not per rank
        print(plan.describe(), file=sys.stdout if log is None else log, flush=True)
    return plan
