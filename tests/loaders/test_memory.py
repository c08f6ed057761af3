"""The one memory probe: a known allocation shows up as about its size, and peaks never go down."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from signstream.loaders import memory
from signstream.loaders.memory import FIELDS, PeakMemory, peak_memory, peak_rss_mib

SIZE_MIB = 96


def _touched(mib: int) -> np.ndarray:
    return np.ones(mib << 20, dtype=np.uint8)  # np.ones writes every page: all of it is resident


def test_a_known_allocation_raises_the_rss_peak_by_about_its_size():
    with PeakMemory(cuda=False) as idle:
        sum(range(1000))
    with PeakMemory(cuda=False) as mem:
        block = _touched(SIZE_MIB)
        del block  # freed before the block ends: only the peak remembers it
    assert SIZE_MIB * 0.95 <= mem.growth_mib <= SIZE_MIB + 16, mem.method
    assert idle.growth_mib < 8
    assert mem.peak_mib >= mem.growth_mib
    assert set(mem.fields()) == {"peak_rss_mib", "peak_rss_growth_mib"} <= set(FIELDS)
    assert mem.fields()["peak_rss_growth_mib"] == pytest.approx(mem.growth_mib, abs=0.05)


def test_the_process_peak_never_goes_down_when_a_block_resets_the_kernels_high_water_mark():
    block = _touched(2 * SIZE_MIB)
    del block
    before = peak_rss_mib()
    with PeakMemory(cuda=False):
        pass  # resets VmHWM where the kernel allows it
    assert peak_rss_mib() >= before
    assert peak_memory()["peak_rss_mib"] == pytest.approx(peak_rss_mib(), abs=0.1)


def test_the_sampled_fallback_also_sees_an_allocation(monkeypatch):
    real_open = open

    def no_clear_refs(path, *args, **kwargs):
        if str(path).endswith("clear_refs"):
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_clear_refs)
    with PeakMemory(cuda=False) as mem:
        block = _touched(SIZE_MIB)
        for _ in range(20):  # held long enough for a 1 ms sampler to see it
            block[::4096] += 1
        del block
    assert mem.method.startswith("RSS sampled")
    assert mem.growth_mib >= SIZE_MIB * 0.9


def test_tree_mode_counts_a_child_process_and_children_mode_reads_the_largest_finished_child():
    grab = f"import time, numpy as np; b = np.ones({SIZE_MIB} << 20, np.uint8); time.sleep(0.6)"
    with PeakMemory(tree=True, cuda=False) as tree:
        subprocess.run([sys.executable, "-c", grab], check=True, timeout=120)
    assert tree.growth_mib >= SIZE_MIB * 0.9
    assert set(tree.fields()) == {"peak_pss_mib"}
    assert memory.peak_rss_mib(children=True) >= SIZE_MIB


def test_cuda_only_block_measures_no_host_memory_and_without_cuda_reports_none():
    with PeakMemory(host=False) as mem:
        _touched(8)
    assert mem.peak_mib == 0.0
    if not torch.cuda.is_available():
        assert mem.cuda_mib is None and mem.fields() == {}
        assert memory.cuda_max_allocated_mib() is None and "cuda_max_allocated_mib" not in peak_memory()


@pytest.mark.cuda
def test_cuda_block_reports_torchs_peak_allocation_and_the_process_peak_keeps_it():
    big = torch.empty(SIZE_MIB << 20, dtype=torch.uint8, device="cuda")
    del big
    before = memory.cuda_max_allocated_mib()
    with PeakMemory(device="cuda") as mem:
        x = torch.empty(16 << 20, dtype=torch.uint8, device="cuda")
        del x
    assert 16 <= mem.cuda_mib < before  # the block's own peak, reset at its start
    assert memory.cuda_max_allocated_mib() >= before >= SIZE_MIB
    assert mem.fields()["cuda_max_allocated_mib"] == pytest.approx(mem.cuda_mib, abs=0.05)
