"""Pipeline benchmark: what the loader costs inside the real recipes.

On the synthetic corpus at 210×260 packed as VP9, S3D cut after block 4 (the demo's backbone): extraction
frames/s ÷ backbone-only frames/s on the same shapes (goal ≥ 0.9), 2 extraction processes ÷ 1, fine-tuning step
time from the loader ÷ from one cached batch, and the demo's WER and stage timings when
``runs/demo/summary.json`` exists. Why: docs/design/benchmarks.md

Run: ``python -m signstream.benchmarks.pipeline --out DIR [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from signstream.benchmarks.report import quick_cli, save_report
from signstream.loaders import Transform, make_loader
from signstream.loaders.memory import MIB, PeakMemory
from signstream.models import create_model, extract_features
from signstream.models.ctc import VideoCTC
from signstream.models.head import ctc_loss
from signstream.models.layers import calibrate_batchnorm


def _corpus(tmp: Path, n: int) -> Path:
    from signstream.tools.pack import pack_corpus
    from signstream.tools.synth import make_corpus

    root = make_corpus(tmp / "corpus", layout="phoenix2014", seed=2, train=n, dev=2, test=2, vocab=20)
    pack_corpus("phoenix2014", tmp / "shards", root=root, progress=False)
    return tmp / "shards"


def extraction_ratio(
    shards: Path,
    size: int,
    num_workers: int | None = 0,
    *,
    backbone: str = "s3d",
    stop_after: int | None = 4,
    device: str = "cpu",
    backend: str = "pyav",
    precision: torch.dtype | None = None,
    split: str = "train",
) -> dict:
    """End-to-end extraction frames/s ÷ backbone-only frames/s on the same shapes.

    Decoding runs in the main process (``num_workers=0``): on a 2-core CPU box a
    worker process competes with the backbone's threads (docs/design/benchmarks.md).
    One loader serves every pass (its first
    epoch is the warm-up), as in the recipe. Both loops are warm and timed twice;
    the best of each counts. On CUDA the timed loops end in a synchronisation and
    ``extract_peak_gpu_mib`` is the peak of torch's CUDA allocations during the
    end-to-end loop, less the backbone-only inputs held meanwhile (DALI's own
    buffers are not torch allocations).

    Args:
        shards: folder holding the packed split.
        size: square input size.
        num_workers: loader workers (PyAV) or threads (DALI); ``None``: the loader's default.
        backbone, stop_after: the model (``stop_after=None``: the whole backbone).
        device, backend: where the batches go and which loader decodes them.
        precision: autocast dtype of the forward passes (``None``: fp32).
        split: the split folder under ``shards``.
    """
    cuda = device.startswith("cuda")
    model = create_model(backbone, **({} if stop_after is None else {"stop_after": stop_after})).eval().to(device)
    tf = Transform.from_input_spec(model.input_spec, size=size)
    ld = make_loader(
        shards / split, backend=backend, device=device, batch_size=1, transform=tf, num_workers=num_workers
    )
    videos = [b.video[:, :, : int(b.lengths[0])].clone() for b in ld]
    calibrate_batchnorm(model, videos[:4])
    extract_features(model, videos[0], autocast=precision)  # warm-up
    frames = sum(v.shape[2] for v in videos)
    synthetic = [torch.randn_like(v) for v in videos]
    del videos
    held = sum(v.numel() * v.element_size() for v in synthetic) if cuda else 0
    e2e, bare, peak = 0.0, 0.0, 0.0

    def timed(run) -> float:
        t0 = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize(device)
        return frames / (time.perf_counter() - t0)

    def e2e_pass() -> None:
        for batch in ld:
            extract_features(model, batch.video[0, :, : int(batch.lengths[0])], autocast=precision)

    def bare_pass() -> None:
        for v in synthetic:
            extract_features(model, v, autocast=precision)

    for _ in range(2):
        with PeakMemory(cuda=cuda, device=device, host=False) as mem:
            e2e = max(e2e, timed(e2e_pass))
        peak = max(peak, mem.cuda_mib - held / MIB if mem.cuda_mib is not None else 0.0)
        bare = max(bare, timed(bare_pass))
    result = {
        "extract_e2e_fps": e2e,
        "extract_backbone_only_fps": bare,
        "extract_ratio": e2e / bare,
        "extract_size": size,
        "extract_frames": frames,
        "extract_num_workers": num_workers,
    }
    if cuda:
        result["extract_peak_gpu_mib"] = peak
    return result


def processes_ratio(shards: Path, size: int, tmp: Path) -> dict:
    """``accelerate launch`` extraction with 2 processes ÷ 1 process (frames/s of the loop)."""
    fps = {}
    cores = os.cpu_count() or 1
    for n in (1, 2):
        out = tmp / f"extract{n}"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(n),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        if n > 1:
            cmd.insert(3, "--multi_gpu")
        cmd += [
            "-m",
            "signstream.recipes.extract_features",
            f"shards={shards}",
            f"out={out}",
            "splits=train",
            "stop_after=4",
            f"image_size={size}",
            "num_workers=1",
            "writers=npy",
            "progress=false",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // n)))
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fps[n] = json.loads((out / "summary.json").read_text())["frames_per_s"]
    return {"extract_1proc_fps": fps[1], "extract_2proc_fps": fps[2], "extract_2_vs_1": fps[2] / fps[1]}


def finetune_ratio(
    shards: Path,
    size: int,
    steps: int,
    *,
    stop_after: int | None = 4,
    device: str = "cpu",
    backend: str = "pyav",
    num_workers: int | None = 1,
    split: str = "train",
) -> dict:
    """Training step time from the loader ÷ with one cached batch (same shapes).

    Args:
        shards: folder holding the packed split.
        size: square input size.
        steps: timed steps of each kind (after one warm-up step).
        stop_after: S3D cut after this block (``None``: the whole backbone).
        device, backend: where the model trains and which loader feeds it.
        num_workers: loader workers (PyAV) or threads (DALI); ``None``: the loader's default.
        split: the split folder under ``shards``.
    """
    torch.manual_seed(0)
    backbone = create_model("s3d", **({} if stop_after is None else {"stop_after": stop_after}))
    backbone.freeze(2)
    model = VideoCTC(backbone, 30, head="linear").to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tf = Transform.from_input_spec(backbone.input_spec, size=size, max_frames=64)
    loader = make_loader(
        shards / split,
        backend=backend,
        device=device,
        mode="train",
        batch_size=4,
        transform=tf,
        num_workers=num_workers,
        seed=0,
    )

    def step(batch):
        n = len(batch.lengths)
        ys = torch.randint(1, 30, (n * 3,), device=device)
        lp, ol = model(batch.video, batch.lengths)
        ctc_loss(lp, ys, ol, torch.full((n,), 3, device=device)).backward()
        opt.step()
        opt.zero_grad()

    def timed(batches):
        t0, n = time.perf_counter(), 0
        for i, b in enumerate(batches):
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()  # first step is warm-up
            step(b)
            n += 1
            if n > steps:
                break
        _sync(device)
        return (time.perf_counter() - t0) / max(1, n - 1)

    batches = _cycle(loader)
    e2e = timed(batches)
    first = next(batches)  # the same iterator: a loader runs one epoch at a time
    batches.close()
    cached = timed(first for _ in range(steps + 1))
    return {
        "finetune_step_s_e2e": e2e,
        "finetune_step_s_cached": cached,
        "finetune_ratio": e2e / cached,
        "finetune_size": size,
    }


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _subset(shards: Path, tmp: Path) -> Path:
    """The first 6 train videos of ``shards`` as their own pack (keeps the 112 px run short)."""
    from signstream.tools.pack import pack_corpus

    pack_corpus(
        "phoenix2014",
        tmp / "small",
        root=tmp / "corpus" / "phoenix2014-release" / "phoenix-2014-multisigner",
        progress=False,
        splits=["train"],
        max_samples=6,
    )
    small = tmp / "small6"
    (small / "train").mkdir(parents=True, exist_ok=True)
    first = tmp / "small" / "train"
    for name in ("train-000000.tar", "train-000000.idx"):
        (small / "train" / name).write_bytes((first / name).read_bytes())
    manifest = json.loads((first / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    manifest["totals"]["samples"] = manifest["shards"][0]["samples"]
    (small / "train" / "manifest.json").write_text(json.dumps(manifest))
    return small


def _cycle(loader):
    while True:
        yield from loader


def run(out: str | Path, quick: bool = False) -> dict:
    """Run the pipeline benchmark; returns (and writes) the figures."""
    out = Path(out)
    size = 48
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = _corpus(tmp, 6 if quick else 24)
        result = {**extraction_ratio(shards, size), **finetune_ratio(shards, size, 3 if quick else 12)}
        if not quick:  # at a realistic input size the backbone dominates and the loader hides behind it
            big = extraction_ratio(_subset(shards, tmp), 112)
            result["extract_112"] = {k: v for k, v in big.items() if k != "extract_size"}
        if not quick:
            result.update(processes_ratio(shards, size, tmp))
    demo = Path("runs/demo/summary.json")
    if demo.exists():
        d = json.loads(demo.read_text())
        result["demo"] = {k: d.get(k) for k in ("dev_wer", "test_wer", "baseline_test_wer", "total_seconds", "stages")}
    result["goals"] = {"extract_ratio_min": 0.9}
    save_report(out, "pipeline", result, render_markdown)
    return result


def render_markdown(r: dict) -> str:
    """Markdown table of the pipeline figures."""
    lines = [
        f"## Pipeline (S3D block 4, {r['extract_size']}×{r['extract_size']}, CPU)",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
        f"| extraction end-to-end | {r['extract_e2e_fps']:.0f} frames/s | |",
        f"| backbone only, same shapes | {r['extract_backbone_only_fps']:.0f} frames/s | |",
        f"| end-to-end ÷ backbone only | {r['extract_ratio']:.2f} | ≥ 0.9 |",
        *(
            [
                f"| same at 112×112 | {r['extract_112']['extract_ratio']:.2f} "
                f"({r['extract_112']['extract_e2e_fps']:.0f} vs "
                f"{r['extract_112']['extract_backbone_only_fps']:.0f} frames/s) | ≥ 0.9 |"
            ]
            if "extract_112" in r
            else []
        ),
        f"| fine-tune step, loader ÷ cached batch | {r['finetune_ratio']:.2f} "
        f"({r['finetune_step_s_e2e']:.2f} s vs {r['finetune_step_s_cached']:.2f} s) | |",
    ]
    if "extract_2_vs_1" in r:
        lines.append(
            f"| extraction 2 processes ÷ 1 | {r['extract_2_vs_1']:.2f} "
            f"({r['extract_2proc_fps']:.0f} vs {r['extract_1proc_fps']:.0f} frames/s) | |"
        )
    if "demo" in r:
        d = r["demo"]
        lines.append(
            f"| demo test WER (random-init baseline) | {d['test_wer']:.1f} % "
            f"({d['baseline_test_wer']:.1f} %) | < baseline |"
        )
        lines.append(f"| demo total time | {d['total_seconds']:.0f} s | ≤ 900 s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    quick_cli(__doc__, run, render_markdown, argv)


if __name__ == "__main__":
    main()
