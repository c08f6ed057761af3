"""The one memory probe: peak host RSS (self, children, process tree) and peak CUDA allocation.

Every figure is in MiB under one set of names (:data:`FIELDS`); recipes, tools and
benchmarks all read memory through here. A block measurement may reset the kernel's
high-water mark, so the probe remembers the peak it wiped and the process-wide peak
never goes down.
"""

from __future__ import annotations

import resource
import sys
import threading
from typing import Any

MIB = 1 << 20
# name -> meaning, for reports; every memory field any output carries is one of these
FIELDS = {
    "peak_rss_mib": "peak resident set size of this process",
    "peak_rss_growth_mib": "peak RSS during the measured block minus RSS just before it",
    "peak_pss_mib": "peak proportional set size of this process and its children (shared pages counted once)",
    "cuda_max_allocated_mib": "torch's peak CUDA allocation (during the block, or since the process started)",
}
_wiped_kib = 0  # the highest VmHWM this process had before a block reset it
_wiped_cuda: dict[int, int] = {}  # per GPU, the highest CUDA peak (bytes) a block's reset wiped


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size (MiB) of this process, or of its largest waited-for child.

    The kernel's own high-water mark (``ru_maxrss``, KiB on Linux), so no short peak is
    missed; a peak wiped by a :class:`PeakMemory` block still counts. With ``children``
    it is the largest child that has finished (the kernel reports the largest, not a sum).
    """
    if children:
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _wiped_kib) / 1024


def _torch_cuda():
    """torch's CUDA module when torch is loaded and a GPU is present (no CUDA allocation otherwise)."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def _cuda_index(cuda, device: Any) -> int:
    import torch

    index = None if device is None else torch.device(device).index
    return cuda.current_device() if index is None else index


def cuda_max_allocated_mib(device: Any = None) -> float | None:
    """torch's peak CUDA allocation on ``device`` (MiB) since the process started; ``None`` without CUDA."""
    cuda = _torch_cuda()
    if cuda is None:
        return None
    index = _cuda_index(cuda, device)
    return max(cuda.max_memory_allocated(index), _wiped_cuda.get(index, 0)) / MIB


def peak_memory(device: Any = None) -> dict[str, float]:
    """This process's peaks so far: ``peak_rss_mib`` and, with CUDA, ``cuda_max_allocated_mib`` (rounded)."""
    out = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    cuda = cuda_max_allocated_mib(device)
    if cuda is not None:
        out["cuda_max_allocated_mib"] = round(cuda, 1)
    return out


def _tree_pss_bytes(proc) -> int:
    """PSS of ``proc`` and its children (plain RSS where PSS cannot be read)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:  # a worker that just exited
            pass
    return total


class PeakMemory:
    """Context manager: the peak memory of the code inside it.

    Args:
        tree: sample the PSS of this process and all its children (loader workers
            included) every ``every`` seconds, instead of this process's RSS.
        every: sampling period in seconds (default 20 ms with ``tree``; 1 ms for RSS
            where the kernel's high-water mark cannot be reset).
        cuda: also reset and read torch's CUDA peak on ``device`` (when CUDA is present).
        device: the CUDA device (default: the current one).
        host: measure host memory (``False``: CUDA only, so no sampler thread can slow a timed block).

    After the block: ``peak_mib`` (RSS, or PSS with ``tree``), ``growth_mib`` (peak minus
    the figure at entry), ``cuda_mib`` (``None`` without CUDA), ``method`` (how RSS was
    read) and :meth:`fields` (the named figures).
    """

    def __init__(
        self,
        *,
        tree: bool = False,
        every: float | None = None,
        cuda: bool = True,
        device: Any = None,
        host: bool = True,
    ):
        self.tree, self.device, self.host = tree, device, host
        self._cuda = _torch_cuda() if cuda else None
        self._every = every if every is not None else (0.02 if tree else 0.001)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.method, self.peak_mib, self.growth_mib, self.cuda_mib = "", 0.0, 0.0, None
        self._start = self._max = 0

    def _read(self) -> int:
        return _tree_pss_bytes(self._proc) if self.tree else self._proc.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            self._max = max(self._max, self._read())

    def __enter__(self) -> PeakMemory:
        global _wiped_kib
        if self._cuda is not None:
            index = _cuda_index(self._cuda, self.device)
            _wiped_cuda[index] = max(_wiped_cuda.get(index, 0), self._cuda.max_memory_allocated(index))
            self._cuda.reset_peak_memory_stats(index)
        if not self.host:
            return self
        import psutil

        self._proc = psutil.Process()
        self._start = self._max = self._read()
        if self.tree:
            self.method = f"PSS of the process tree sampled every {self._every * 1000:g} ms"
        else:
            hwm = max(_status_kib("VmHWM") or 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets the kernel's peak-RSS counter (VmHWM) to the current RSS
                _wiped_kib = max(_wiped_kib, hwm)
                self.method = "VmHWM after /proc/self/clear_refs reset"
                return self
            except OSError:
                self.method = f"RSS sampled every {self._every * 1000:g} ms"
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda is not None:
            self.cuda_mib = self._cuda.max_memory_allocated(_cuda_index(self._cuda, self.device)) / MIB
        if not self.host:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10 + 10 * self._every)  # one sample in flight at most
            peak = max(self._max, self._read())
        else:
            peak = max((_status_kib("VmHWM") or 0) * 1024, self._read())
        self.peak_mib = peak / MIB
        self.growth_mib = max(peak - self._start, 0) / MIB

    def fields(self) -> dict[str, float]:
        """The block's figures under the names of :data:`FIELDS`, rounded to 0.1 MiB."""
        if not self.host:
            out = {}
        elif self.tree:
            out = {"peak_pss_mib": round(self.peak_mib, 1)}
        else:
            out = {"peak_rss_mib": round(self.peak_mib, 1), "peak_rss_growth_mib": round(self.growth_mib, 1)}
        if self.cuda_mib is not None:
            out["cuda_max_allocated_mib"] = round(self.cuda_mib, 1)
        return out
