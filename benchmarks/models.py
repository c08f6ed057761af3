"""Backbone benchmark: throughput and peak memory of every registered backbone.

On synthetic inputs (random tensors; no weights, no data): clips/s, frames/s and peak memory of
``forward_features`` per backbone and input size (CUDA rows skipped without a GPU), and the peak memory of
dense extraction on a 100-frame and a 2,000-frame video (goal: ≤ 1.2× apart). Each case runs in its own
subprocess unless ``quick``. Why: docs/design/benchmarks.md

Run: ``python -m signstream.benchmarks.models --out DIR [--sizes 112,224] [--frames 16] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from signstream.benchmarks.report import save_report
from signstream.loaders.memory import MIB, PeakMemory

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DENSE_GOAL = 1.2
MEMORY_METHOD = (
    "CPU: peak RSS during the measured calls minus RSS just before them (model and input "
    "already allocated), per row's rss_method; CUDA: torch.cuda.max_memory_allocated"
)


# -- cases --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_loop(model, x, amp, device, warmup: int, min_iters: int, min_seconds: float) -> tuple[int, float]:
    with torch.inference_mode(), amp:
        for _ in range(warmup):
            model.forward_features(x)
        _sync(device)
        iters, t0 = 0, time.perf_counter()
        while iters < min_iters or time.perf_counter() - t0 < min_seconds:
            model.forward_features(x)
            _sync(device)
            iters += 1
    return iters, time.perf_counter() - t0


def throughput_case(case: dict) -> dict:
    """Clips/s, frames/s and peak memory of one backbone at one size/device/dtype."""
    from signstream.models import create_model

    device = torch.device(case["device"])
    torch.manual_seed(0)
    model = create_model(case["model"]).eval().to(device)
    x = torch.randn(case["batch"], 3, case["frames"], case["size"], case["size"], device=device)
    dtype = DTYPES[case["dtype"]]
    amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with PeakMemory(cuda=device.type == "cuda", device=device) as mem:
        iters, seconds = _timed_loop(model, x, amp, device, case["warmup"], case["min_iters"], case["min_seconds"])
    clips_s = case["batch"] * iters / seconds
    row = dict(case)
    row.update(
        iters=iters,
        clips_per_s=round(clips_s, 3),
        frames_per_s=round(clips_s * case["frames"], 2),
        ms_per_clip=round(1000 / clips_s, 1),
        **mem.fields(),  # peak_rss_growth_mib, peak_rss_mib and, on CUDA, cuda_max_allocated_mib
        rss_method=mem.method,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        threads=torch.get_num_threads(),
    )
    return row


def dense_case(case: dict) -> dict:
    """Peak memory and time of dense extraction on one synthetic video."""
    from signstream.models import create_model
    from signstream.models.features import extract_features

    torch.manual_seed(0)
    model = create_model(case["model"]).eval()
    video = torch.randn(3, case["frames"], case["size"], case["size"])
    # Warm-up on a clip of one chunk's size, so one-off allocations (oneDNN
    # primitives, thread pools) are not charged to either video.
    extract_features(model, video[:, : min(case["frames"], 32)], "dense")
    t0 = time.perf_counter()
    with PeakMemory(cuda=False) as mem:
        feats = extract_features(model, video, "dense", chunk_len=case["chunk_len"], overlap=case["overlap"])
    row = dict(case)
    row.update(
        seconds=round(time.perf_counter() - t0, 2),
        out_frames=int(feats.shape[0]),
        input_mib=round(video.numel() * video.element_size() / MIB, 1),
        **mem.fields(),
        rss_method=mem.method,
        threads=torch.get_num_threads(),
    )
    return row


CASES = {"throughput": throughput_case, "dense": dense_case}


def run_case(case: dict, isolate: bool) -> dict:
    """Run one case here or in a fresh subprocess; a failure becomes an ``error`` row."""
    if not isolate:
        before = torch.get_num_threads()
        if case.get("threads"):
            torch.set_num_threads(case["threads"])
        try:
            return CASES[case["kind"]](case)
        finally:
            torch.set_num_threads(before)  # leave the caller's process as it was
    cmd = [sys.executable, "-m", "signstream.benchmarks.models", "--case", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(case, error=f"exit {proc.returncode}: {tail}")
    return json.loads(lines[-1])


# -- plan, report ---------------------------------------------------------------------
def plan(
    quick: bool, sizes: list[int], frames: int, batch: int, models: list[str], threads: int | None
) -> tuple[list[dict], list[dict], list[str]]:
    """The throughput cases, the dense-memory cases and the skipped parts."""
    devices = [("cpu", "fp32")]
    skipped = []
    if torch.cuda.is_available():
        devices += [("cuda", d) for d in DTYPES]
    else:
        skipped.append("CUDA rows (fp32, bf16, fp16 autocast; max allocated): no CUDA device")
    timing = dict(warmup=1, min_iters=1, min_seconds=0.0) if quick else dict(warmup=2, min_iters=3, min_seconds=3.0)
    throughput = [
        dict(
            kind="throughput",
            model=m,
            size=s,
            frames=frames,
            batch=batch,
            device=dev,
            dtype=dt,
            threads=threads,
            **timing,
        )
        for dev, dt in devices
        for m in models
        for s in sizes
    ]
    dense = [
        dict(
            kind="dense",
            model="i3d",
            size=size,
            frames=n,
            setting=name,
            chunk_len=c,
            overlap=o,
            threads=threads,
        )
        for name, size, c, o, lengths in _dense_settings(quick)
        for n in lengths
    ]
    return throughput, dense, skipped


def _dense_settings(quick: bool) -> list[tuple]:
    # (setting, size, chunk_len, overlap, video lengths).
    # "default": the dense defaults (chunk 128 + 2 x 56 context, exact seams).
    # "matched chunks": chunk 32 + 2 x 32 context, so the 100-frame video is
    # chunked into the same 96-frame pieces as the 2,000-frame one (approximate seams).
    if quick:
        return [("default", 16, None, None, (16, 96)), ("matched chunks", 16, 16, 16, (48, 96))]
    return [
        ("default", 64, None, None, (100, 500, 2000)),
        ("matched chunks", 64, 32, 32, (100, 2000)),
    ]


def _dense_summary(rows: list[dict]) -> list[dict]:
    """Peak-growth ratio of the longest video to each shorter one, per setting."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        ok = sorted(
            (r for r in rows if r["setting"] == setting and "error" not in r),
            key=lambda r: r["frames"],
        )
        longest = ok[-1] if ok else None
        for short in ok[:-1]:
            if short["peak_rss_growth_mib"] <= 0:
                continue
            ratio = longest["peak_rss_growth_mib"] / short["peak_rss_growth_mib"]
            out.append(
                dict(
                    setting=setting,
                    frames=f"{longest['frames']} vs {short['frames']}",
                    growth_ratio=round(ratio, 2),
                    process_peak_ratio=round(longest["peak_rss_mib"] / short["peak_rss_mib"], 2),
                    goal=DENSE_GOAL,
                    goal_met=ratio <= DENSE_GOAL,
                )
            )
    return out


def _env() -> dict:
    import torchvision

    env = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        cuda=torch.cuda.is_available(),
    )
    if env["cuda"]:
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def _table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The Markdown report section for ``result``."""
    tp_cols = [
        "model",
        "size",
        "frames",
        "batch",
        "device",
        "dtype",
        "clips_per_s",
        "frames_per_s",
        "ms_per_clip",
        "peak_rss_growth_mib",
        "cuda_max_allocated_mib",
        "threads",
        "error",
    ]
    dense_cols = [
        "setting",
        "frames",
        "chunk_len",
        "overlap",
        "out_frames",
        "seconds",
        "input_mib",
        "peak_rss_growth_mib",
        "peak_rss_mib",
        "error",
    ]
    env = result["env"]
    parts = [
        "## Backbones (`signstream.benchmarks.models`)",
        f"torch {env['torch']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch threads, "
        f"CUDA: {env.get('cuda_device', 'none')}. Synthetic random inputs, random weights, "
        f"`forward_features` under `torch.inference_mode`. Peak memory: {result['method']['memory']}.",
        "### Throughput",
        _table(result["throughput"], tp_cols),
        "### Dense extraction memory vs video length",
        f"Backbone i3d at {result['dense']['rows'][0]['size'] if result['dense']['rows'] else '-'} px. "
        "`default` = dense defaults (chunk_len 128, overlap = half the receptive field = 56 "
        "frames for i3d: exact seams, chunks of up to 240 frames, while a 100-frame video runs "
        "as one 104-frame pass); `matched chunks` = chunk_len 32, overlap 32, so both videos "
        "run in the same 96-frame pieces (approximate seams). The input tensor is allocated "
        "before measuring (`input_mib`), so growth is the extraction's own memory; it follows "
        "the largest chunk, not the video length.",
        _table(result["dense"]["rows"], dense_cols),
        _table(
            result["dense"]["summary"],
            ["setting", "frames", "growth_ratio", "process_peak_ratio", "goal", "goal_met"],
        ),
    ]
    if result["skipped"]:
        parts.append("Skipped: " + "; ".join(result["skipped"]) + ".")
    return "\n\n".join(parts) + "\n"


def run(
    out: str | Path,
    quick: bool = False,
    *,
    sizes: list[int] | None = None,
    frames: int | None = None,
    batch: int = 1,
    models: list[str] | None = None,
    threads: int | None = None,
    isolate: bool | None = None,
) -> dict:
    """Run the backbone benchmark and write ``models.json`` and ``models.md`` to ``out``.

    Args:
        out: output directory.
        quick: tiny sizes and single iterations (smoke run), in-process.
        sizes: square input sizes (default 112, 224; quick 32).
        frames: frames per clip (default 16; quick 8).
        batch: clips per forward pass.
        models: backbone names (default: every registered one).
        threads: torch CPU threads per case (default: torch's default).
        isolate: one subprocess per case (default: ``not quick``).

    Returns:
        The result dict that was written as JSON.
    """
    from signstream.models import list_models

    sizes = sizes or ([32] if quick else [112, 224])
    frames = frames or (8 if quick else 16)
    isolate = (not quick) if isolate is None else isolate
    throughput, dense, skipped = plan(quick, sizes, frames, batch, models or list_models(), threads)
    rows = []
    for case in throughput + dense:
        print(
            f"[models] {case['kind']}: {case['model']} size={case['size']} frames={case['frames']} "
            f"{case.get('device', '')} {case.get('dtype', case.get('setting'))}",
            flush=True,
        )
        rows.append(run_case(case, isolate))
    dense_rows = [r for r in rows if r["kind"] == "dense"]
    result = dict(
        benchmark="models",
        quick=quick,
        env=_env(),
        method=dict(memory=MEMORY_METHOD, isolated=isolate),
        throughput=[r for r in rows if r["kind"] == "throughput"],
        dense=dict(rows=dense_rows, summary=_dense_summary(dense_rows)),
        skipped=skipped,
    )
    out = Path(out)
    save_report(out, "models", result, markdown)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output directory for models.json / models.md")
    parser.add_argument("--sizes", help="comma-separated square sizes (default 112,224)")
    parser.add_argument("--frames", type=int, help="frames per clip (default 16)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", help="comma-separated backbone names (default: all)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per case")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one iteration (smoke run)")
    parser.add_argument("--no-isolate", action="store_true", help="run every case in this process")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON in and out
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case), isolate=False)))
        return 0
    if not args.out:
        parser.error("--out is required")
    result = run(
        args.out,
        args.quick,
        sizes=[int(s) for s in args.sizes.split(",")] if args.sizes else None,
        frames=args.frames,
        batch=args.batch,
        models=args.models.split(",") if args.models else None,
        threads=args.threads,
        isolate=False if args.no_isolate else None,
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
