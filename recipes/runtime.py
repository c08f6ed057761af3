"""Where and how a run executes: the Accelerator policy, threads, and how a command ends.

:func:`accelerator_for` applies the thread policy and builds the Accelerator on
the configured device; :func:`guarded` is the one exit-code policy of every
command and recipe: user error 2, full disk 1, Ctrl-C 130, SIGTERM 143, each one
line on stderr with secrets in URLs redacted. Anything else is a bug and keeps
its traceback. Nothing here imports torch until an Accelerator is asked for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from signstream import SignstreamError
from signstream.loaders.fileio import disk_full
from signstream.loaders.remote import redact

STOP_GRACE_S = 15.0  # after SIGTERM, longest the clean unwind may take before the process just exits
RESUME_HINT = "; rerun the same command to resume"


def accelerate_precision(precision: str) -> str:
    """Accelerate's ``mixed_precision`` value for a recipe's ``precision`` (fp32 -> ``no``)."""
    return "no" if precision == "fp32" else precision


def make_accelerator(device: str = "auto", **kwargs: Any):
    """The recipe's ``Accelerator`` on ``device`` (a ``Device`` config value); ``kwargs`` go to Accelerate.

    ``auto`` is CUDA when there is one, else the CPU (MULTI_CPU over gloo under
    a multi-process launch). ``cuda:N`` makes GPU N the current CUDA device, so
    the model, the batches and the loaders, which the recipes put on ``"cuda"``,
    all land there; it names one GPU, so it is refused under a multi-process
    launch, where each process takes the GPU of its local rank (use ``cuda``).

    Raises:
        SignstreamError: CUDA asked for but absent, ``cuda:N`` past the last
            GPU (checked before CUDA is initialised), or fp16 training on the
            CPU, one line each.
    """
    import torch
    from accelerate import Accelerator

    index = None
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = torch.device(device).index
        if count == 0:
            raise SignstreamError(f"device={device!r} but no CUDA device is available; use device=cpu or auto")
        if index is not None and index >= count:
            raise SignstreamError(
                f"device={device!r} but only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
            )
        if index is not None:
            torch.cuda.set_device(index)
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if on_cpu and kwargs.get("mixed_precision") == "fp16":
        # Accelerate applies no fp16 autocast on the CPU: the run would silently train in fp32
        raise SignstreamError(
            "precision=fp16 trains on CUDA only (on the CPU it would silently run in fp32); "
            "use precision=bf16 or fp32 on the CPU"
        )
    accelerator = Accelerator(cpu=on_cpu, **kwargs)
    if index is not None and accelerator.num_processes > 1:
        raise SignstreamError(
            f"device={device!r} names one GPU but this launch has {accelerator.num_processes} "
            "processes (each takes its local rank's GPU); use device=cuda"
        )
    return accelerator


def accelerator_for(cfg: Any, workers: int, **kwargs: Any):
    """Apply the thread policy for ``cfg.threads``, then make the Accelerator on ``cfg.device``.

    Args:
        cfg: a recipe config with ``threads`` and ``device`` keys, and the tracker keys
            (``log_with``, ``logging_dir``, ``out``) when it has any.
        workers: loader worker processes of this rank (each counted as one busy core).
        **kwargs: passed to Accelerate (``mixed_precision``, ``gradient_accumulation_steps``...).
    """
    from signstream.recipes.threads import apply_thread_policy
    from signstream.recipes.trackers import accelerator_options

    apply_thread_policy(cfg.threads, workers=workers)
    return make_accelerator(cfg.device, **accelerator_options(cfg), **kwargs)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the command unwinds like Ctrl-C.

    A ``BaseException`` like ``KeyboardInterrupt``: no ``except Exception`` on
    the way may swallow it.
    """


@contextlib.contextmanager
def stop_signals(line: str) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``.

    Only in this process: a forked worker (a pool's) that inherits the handler
    ignores SIGINT (its parent stops it) and dies of SIGTERM at once, quietly,
    as it would have without the handler; its parent is the one that reports. After the
    first SIGTERM a second one kills at once, and a watchdog prints ``line`` and
    exits 143 if unwinding takes longer than :data:`STOP_GRACE_S`. The previous
    handlers are restored when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, watchdog = os.getpid(), []

    def give_up() -> None:
        print(line, file=sys.stderr, flush=True)
        os._exit(143)

    def handler(signum, frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_IGN if signum == signal.SIGINT else signal.SIG_DFL)
            if signum == signal.SIGTERM:
                os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        watchdog.append(threading.Timer(STOP_GRACE_S, give_up))
        watchdog[-1].daemon = True
        watchdog[-1].start()
        raise Terminated

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for timer in watchdog:
            timer.cancel()


def guarded(run: Callable[[], int | None], name: str = "", resumable: bool = True) -> int:
    """Run ``run()`` and return its exit code; every expected way it ends is one line on stderr.

    Args:
        run: the command; its return value (``None`` read as 0) is the exit code.
        name: what the lines start with (``"signstream pack"``); none for a recipe.
        resumable: after Ctrl-C or SIGTERM, say that rerunning the same command resumes.

    Returns:
        ``run()``'s code, or 2 for a :class:`SignstreamError`, 1 for a full disk,
        130 for Ctrl-C, 143 for SIGTERM. The signal handlers are in place before
        ``run`` starts, so a SIGTERM while it imports its modules is reported the same way.
    """
    prefix, resume = f"{name}: " if name else "", RESUME_HINT if resumable else ""
    try:
        with stop_signals(f"{prefix}terminated{resume}"):
            return int(run() or 0)
    except SignstreamError as exc:
        print(f"{prefix}error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}interrupted{resume}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prefix}terminated{resume}", file=sys.stderr)
        return 143
    except OSError as exc:
        if not disk_full(exc):
            raise
        print(f"{prefix}error: {redact(disk_full(exc))}", file=sys.stderr)
        return 1


def main_guard(fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a recipe's ``main(argv)`` under :func:`guarded`; outputs are written atomically, so
    after Ctrl-C, SIGTERM or a full disk, rerunning the same command resumes."""
    return guarded(lambda: fn(argv))
