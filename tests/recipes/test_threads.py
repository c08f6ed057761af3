"""Tests for the CPU thread policy: cores, local processes, workers, env -> threads."""

from __future__ import annotations

import io

import pytest
import torch

from signstream.recipes.threads import apply_thread_policy, local_processes, plan_threads


@pytest.mark.parametrize(
    ("cores", "procs", "workers", "expected"),
    [
        (2, 1, 0, 2),  # one process alone gets every core
        (2, 1, 1, 1),  # a loader worker takes one of the two cores
        (2, 2, 0, 1),  # two ranks on two cores: one thread each
        (2, 2, 1, 1),  # never below one thread
        (16, 1, 4, 12),  # workers are subtracted, not divided into the share
        (16, 4, 1, 3),  # each rank gets cores // ranks, less its worker
        (3, 2, 0, 1),  # a share that does not divide evenly rounds down
    ],
)
def test_policy_divides_cores_by_local_processes_less_workers(cores, procs, workers, expected):
    plan = plan_threads(cores, procs, workers, env={})
    assert (plan.threads, plan.source) == (expected, "policy")


def test_omp_num_threads_from_the_user_wins_over_the_policy():
    plan = plan_threads(16, 1, 0, env={"OMP_NUM_THREADS": "3"})
    assert (plan.threads, plan.source) == (3, "OMP_NUM_THREADS")


def test_config_key_wins_over_omp_num_threads():
    plan = plan_threads(16, 1, 0, env={"OMP_NUM_THREADS": "3"}, configured=5)
    assert (plan.threads, plan.source) == (5, "config")


@pytest.mark.parametrize("value", ["", "0", "abc", "-2"])
def test_unusable_omp_num_threads_falls_back_to_the_policy(value):
    plan = plan_threads(4, 2, 0, env={"OMP_NUM_THREADS": value})
    assert (plan.threads, plan.source) == (2, "policy")


def test_local_processes_read_from_the_launcher_environment():
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_processes({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}) == 2
    assert local_processes({}) == 1


def test_describe_names_the_inputs_of_the_decision():
    assert (
        plan_threads(2, 1, 1, env={}).describe() == "torch threads: 1 (policy: 2 cores / 1 process - 1 loader worker)"
    )
    assert "set by OMP_NUM_THREADS" in plan_threads(2, env={"OMP_NUM_THREADS": "2"}).describe()


def test_apply_sets_torch_threads_and_logs_one_line(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    log = io.StringIO()
    try:
        plan = apply_thread_policy(configured=1, workers=0, log=log)
        assert torch.get_num_threads() == plan.threads == 1
        assert log.getvalue().count("\n") == 1 and "set by config" in log.getvalue()
    finally:
        torch.set_num_threads(before)
