"""The GPU proof: the GPU figures of the project in one bounded run, each written as it is taken.

Steps run one after another, each in its own Python process under its own time limit; the whole run is capped
under 5 minutes. Figures reach ``gpu.json`` and ``gpu.md`` (written atomically) as they are taken. Key invariant:
a figure that could not be taken is ``null`` with its reason, never a guess, and a failed or stopped step leaves
every other step's figures as they were; without CUDA the CUDA steps are skipped. Why: docs/design/benchmarks.md

Run: ``python -m signstream.benchmarks.gpu_proof --out DIR [--no-cuda] [--limit STEP=SECONDS]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from signstream.benchmarks.report import save_report
from signstream.loaders.fileio import write_json

TOTAL_S = 295.0  # the whole run (the limits below add up to this), however they are overridden
LOGS = "gpu-logs"
POLL_S = 0.5
PYTEST_GRACE_S = 10.0  # pytest gets SIGINT this long before its step's limit, to write its report
# PHOENIX-2014 multisigner release, all three splits: about 0.96 M frames (a round figure; the
# estimate scales linearly with it, and gpu.json records the count it assumed)
PHOENIX2014_FRAMES = 960_000
SIZE = 224
LOADER_BATCH = 4
# (10, 14) glosses: ~145 frames a clip, about PHOENIX-2014's mean (~0.96 M frames / ~6.8 k videos)
INPUTS = {"cuda": {"clips": 24, "glosses": (10, 14)}, "cpu": {"clips": 2, "glosses": (2, 3)}}
GOALS = {"nvdec_frames_per_s": 20_000, "bf16_ratio": 0.9, "loader_overhead": 0.10, "phoenix_minutes": 2.0}
EXTRACTION_ROWS = [("i3d", "fp32"), ("i3d", "bf16"), ("s3d", "fp32"), ("s3d", "bf16")]
LOADER_ROWS = [("dali-nvdec", 1), ("dali-nvdec", None), ("pyav-to-cuda", None)]  # None: measured


@dataclass(frozen=True)
class Step:
    """One bounded step: the fields of ``gpu.json`` it owns and what it needs."""

    name: str
    limit: float
    owns: tuple[str, ...]
    cuda: bool = True
    needs_inputs: bool = False


STEPS = (
    Step("env", 15, ("device", "dali_version", "torch_version"), cuda=False),
    Step("nvdec", 10, ("nvdec",)),
    Step("inputs", 30, ("inputs",), cuda=False),
    Step("loaders_dali_1", 20, ("loaders[0]",), needs_inputs=True),
    Step("loaders_dali_default", 20, ("loaders[1]",), needs_inputs=True),
    Step("loaders_pyav_cuda", 25, ("loaders[2]",), needs_inputs=True),
    Step("extraction", 70, tuple(f"extraction[{i}]" for i in range(len(EXTRACTION_ROWS))), needs_inputs=True),
    Step("finetune", 30, ("finetune",), needs_inputs=True),
    Step("cuda_tests", 75, ("cuda_tests",)),
)
STEP_NAMES = [s.name for s in STEPS]


# --------------------------------------------------------------------- the document
def skeleton(date: str) -> dict[str, Any]:
    """``gpu.json`` before any step ran: every field present, every figure null with a reason."""
    doc = {
        "device": None,
        "date": date,
        "dali_version": None,
        "torch_version": None,
        "cuda_tests": {"passed": None, "failed": None, "skipped": None},
        "nvdec": {"driver_report": None, "engine_count": None, "mig_mode": None},
        "loaders": [{"backend": b, "threads": t, "codec": "vp9", "frames_per_s": None} for b, t in LOADER_ROWS],
        "extraction": [
            {
                "backbone": b,
                "precision": p,
                "image_size": SIZE,
                "e2e_frames_per_s": None,
                "backbone_only_frames_per_s": None,
                "ratio": None,
                "peak_gpu_mib": None,
            }
            for b, p in EXTRACTION_ROWS
        ],
        "finetune": {"step_s_from_loader": None, "step_s_cached_batch": None},
        "phoenix2014_i3d_extraction_minutes": None,
        "phoenix2014_frames_assumed": PHOENIX2014_FRAMES,
        "phoenix2014_i3d_extraction_basis": None,
        "inputs": {"clips": None, "frames": None, "height": None, "width": None, "codec": None, "seconds": None},
        "reasons": {},
        "steps": {s.name: {"status": "pending", "limit_s": s.limit} for s in STEPS},
    }
    for step in STEPS:
        for path in step.owns:
            doc["reasons"][path] = f"not measured: the run ended before step {step.name}"
    update_phoenix(doc)
    return doc


_PATH = re.compile(r"^(\w+)(?:\[(\d+)\])?$")


def get_path(doc: dict, path: str) -> Any:
    name, index = _PATH.match(path).groups()
    return doc[name] if index is None else doc[name][int(index)]


def set_path(doc: dict, path: str, value: Any) -> None:
    name, index = _PATH.match(path).groups()
    if index is None:
        doc[name] = value
    else:
        doc[name][int(index)] = value


def _under(key: str, path: str) -> bool:
    return key == path or key.startswith(path + ".")


def _has_null(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and any(v is None for v in value.values()))


def apply_state(doc: dict, step: Step, state: dict, fallback: str) -> None:
    """Merge a step's published ``{"values", "reasons"}`` into ``doc``, only into the paths it owns.

    The step's earlier reasons are dropped first; an owned figure still null without a reason of
    the step's own gets ``fallback`` (e.g. "stopped at its limit").
    """
    mine = lambda key: any(_under(key, p) for p in step.owns)  # noqa: E731
    doc["reasons"] = {k: v for k, v in doc["reasons"].items() if not mine(k)}
    for path, value in state.get("values", {}).items():
        if path in step.owns:
            set_path(doc, path, value)
    doc["reasons"].update({k: v for k, v in state.get("reasons", {}).items() if mine(k)})
    for path in step.owns:
        if _has_null(get_path(doc, path)) and not any(_under(k, path) for k in doc["reasons"]):
            doc["reasons"][path] = fallback
    update_phoenix(doc)


def update_phoenix(doc: dict) -> None:
    """PHOENIX-2014 I3D extraction minutes on one GPU, from the i3d bf16 (else fastest i3d) e2e row."""
    key = "phoenix2014_i3d_extraction_minutes"
    rows = [r for r in doc["extraction"] if r["backbone"] == "i3d" and r["e2e_frames_per_s"]]
    best = next((r for r in rows if r["precision"] == "bf16"), None) or max(
        rows, key=lambda r: r["e2e_frames_per_s"], default=None
    )
    if best is None:
        doc[key] = doc["phoenix2014_i3d_extraction_basis"] = None
        doc["reasons"][key] = "needs an i3d end-to-end extraction figure; none was taken (see extraction[...])"
        return
    fps = best["e2e_frames_per_s"]
    doc[key] = round(PHOENIX2014_FRAMES / fps / 60, 2)
    doc["phoenix2014_i3d_extraction_basis"] = (
        f"{PHOENIX2014_FRAMES:,} frames / {fps:,.0f} frames/s (i3d {best['precision']}, {best['image_size']} px, "
        f"DALI NVDEC end to end, one GPU; writing the features not included)"
    )
    doc["reasons"].pop(key, None)


def junit_counts(path: Path) -> dict[str, int]:
    """``{passed, failed, skipped}`` from a pytest ``--junitxml`` report (errors count as failed)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")

    def total(attr: str) -> int:
        return sum(int(s.get(attr, 0)) for s in suites)

    failed, skipped = total("failures") + total("errors"), total("skipped")
    return {"passed": total("tests") - failed - skipped, "failed": failed, "skipped": skipped}


# ------------------------------------------------------------------ the orchestrator
def _cuda_reason(no_cuda: bool) -> str | None:
    if no_cuda:
        return "skipped: --no-cuda"
    import torch

    return None if torch.cuda.is_available() else "skipped: no CUDA device (torch.cuda.is_available() is False)"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the step's own session: its workers and pytest too
    except ProcessLookupError:
        pass
    proc.wait()


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[-300:]


@dataclass
class Run:
    """One run of the proof: where it writes, what it skips and when it must end."""

    out: Path
    work: Path
    cuda_reason: str | None
    limits: dict[str, float]
    clips: int | None
    deadline: float
    doc: dict = field(default_factory=dict)

    def save(self) -> None:
        save_report(self.out, "gpu", self.doc, markdown)

    def command(self, step: Step, limit: float) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "signstream.benchmarks.gpu_proof",
            "--out",
            str(self.out),
            "--step",
            step.name,
            "--step-limit",
            str(limit),
            "--work",
            str(self.work),
        ]
        cmd += ["--clips", str(self.clips)] if self.clips else []
        return cmd + (["--cuda-reason", self.cuda_reason] if self.cuda_reason else [])

    def skip_reason(self, step: Step, limit: float) -> str | None:
        if step.cuda and self.cuda_reason:
            return self.cuda_reason
        if step.needs_inputs and self.doc["steps"]["inputs"]["status"] != "ok":
            return f"skipped: no input clips (step inputs: {self.doc['steps']['inputs']['status']})"
        if limit < 1:
            return f"skipped: no time left in the run's {TOTAL_S:.0f} s"
        return None

    def run_step(self, step: Step) -> None:
        limit = min(self.limits.get(step.name, step.limit), self.deadline - time.monotonic())
        info = self.doc["steps"][step.name]
        info["limit_s"] = round(max(limit, 0), 1)
        skip = self.skip_reason(step, limit)
        if skip:
            info["status"] = "skipped"
            apply_state(self.doc, step, {}, skip)
            return self.save()
        info["status"], info["log"] = "running", f"{LOGS}/{step.name}.log"
        log, state = self.out / LOGS / f"{step.name}.log", self.out / LOGS / f"{step.name}.json"
        state.unlink(missing_ok=True)
        running = f"not measured: the run ended while step {step.name} ran"
        apply_state(self.doc, step, {}, running)
        self.save()
        t0, seen = time.monotonic(), None
        with open(log, "w") as f:
            proc = subprocess.Popen(
                self.command(step, limit), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            rc = None
            while rc is None:
                try:
                    rc = proc.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    seen = self.merge(step, state, seen, running)
                    if time.monotonic() - t0 >= limit:
                        _kill_group(proc)
                        break
        info["seconds"] = round(time.monotonic() - t0, 1)
        info["status"] = "ok" if rc == 0 else "timed out" if rc is None else f"failed (exit {rc})"
        why = {
            "ok": f"step {step.name} ended without this figure",
            "timed out": f"step {step.name} was stopped at its {limit:.0f} s limit",
        }.get(info["status"], f"step {step.name} {info['status']}: {_last_line(log)}")
        self.merge(step, state, None, why, final=True)

    def merge(self, step: Step, state: Path, seen: int | None, fallback: str, final: bool = False) -> int | None:
        """Merge the step's state file into the document and save, when it changed since ``seen`` (its
        mtime) or when ``final``; returns the mtime merged."""
        try:
            stamp = state.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if not final and (stamp is None or stamp == seen):
            return seen
        apply_state(self.doc, step, json.loads(state.read_text()) if stamp is not None else {}, fallback)
        self.save()
        return stamp


def run(
    out: str | os.PathLike, *, no_cuda: bool = False, limits: dict[str, float] | None = None, clips: int | None = None
) -> dict:
    """Run every step; writes ``out/gpu.json``, ``out/gpu.md`` and ``out/gpu-logs/``; returns the document.

    Args:
        out: output folder.
        no_cuda: skip the CUDA steps even where CUDA is present (they are skipped without it anyway).
        limits: per-step time limits in seconds overriding :data:`STEPS` (the run stays capped at :data:`TOTAL_S`).
        clips: synthetic clips to make (default 24 with CUDA, 2 without).
    """
    start = time.monotonic()
    out = Path(out)
    (out / LOGS).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="signstream-gpu-proof-") as work:
        proof = Run(out, Path(work), _cuda_reason(no_cuda), dict(limits or {}), clips, start + TOTAL_S)
        proof.doc = skeleton(datetime.now(UTC).isoformat(timespec="seconds"))
        proof.save()
        for step in STEPS:
            print(f"[gpu_proof] {step.name} ...", flush=True)
            proof.run_step(step)
            print(f"[gpu_proof] {step.name}: {proof.doc['steps'][step.name]['status']}", flush=True)
    return proof.doc


# ------------------------------------------------------------------------ the steps
@dataclass
class StepContext:
    """What a step process knows, and :meth:`publish` to hand over each figure as it is taken."""

    name: str
    logs: Path
    work: Path
    limit: float
    clips: int | None
    cuda_reason: str | None
    values: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)

    def publish(self, values: dict | None = None, reasons: dict | None = None) -> None:
        self.values.update(values or {})
        self.reasons.update(reasons or {})
        write_json(self.logs / f"{self.name}.json", {"values": self.values, "reasons": self.reasons})

    @property
    def shards(self) -> Path:
        return self.work / "vp9"  # make_inputs packs the dev split there


def step_env(ctx: StepContext) -> None:
    import torch

    ctx.publish({"torch_version": torch.__version__})
    if ctx.cuda_reason:
        ctx.publish(reasons={"device": ctx.cuda_reason})
    else:
        ctx.publish({"device": torch.cuda.get_device_name(0)})
    try:
        import nvidia.dali

        ctx.publish({"dali_version": nvidia.dali.__version__})
    except ImportError as exc:
        ctx.publish(reasons={"dali_version": f"nvidia.dali does not import: {exc}"})


def _nvdec_engines() -> tuple[int | None, str | None]:
    """NVDEC engines that decode 8-bit 4:2:0 VP9 or H.264 on GPU 0, as the driver counts them."""
    import ctypes

    from signstream.loaders import nvdec

    counts = []
    try:
        cuda, cuvid = nvdec._libraries()
        with nvdec._Driver(cuda, cuvid, 0):
            for codec in ("vp9", "h264"):
                caps = nvdec.DecodeCaps(eCodecType=nvdec.CODEC_IDS[codec], eChromaFormat=nvdec.CHROMA_420)
                if cuvid.cuvidGetDecoderCaps(ctypes.byref(caps)) == 0 and caps.bIsSupported:
                    counts.append(int(caps.reserved2[0]))  # nNumNVDECs in Video Codec SDK 11+ headers
    except (OSError, AttributeError) as exc:
        return None, f"the driver could not be asked: {exc}"
    if not max(counts, default=0):
        return None, "the driver reports 0 NVDEC engines for VP9/H.264 (or a driver too old to count them)"
    return max(counts), None


def _mig_mode() -> tuple[str | None, str | None]:
    cmd = ["nvidia-smi", "--query-gpu=mig.mode.current", "--format=csv,noheader", "-i", "0"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi did not answer: {exc}"
    if proc.returncode != 0 or not proc.stdout.strip():
        return None, f"nvidia-smi exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return proc.stdout.strip(), None  # "Disabled", "Enabled", or "[N/A]" on a GPU without MIG


def step_nvdec(ctx: StepContext) -> None:
    from signstream.loaders import nvdec

    found, reasons = {}, {}
    report = nvdec.report(0)
    if nvdec.query_caps(0) is None:
        found["driver_report"], reasons["nvdec.driver_report"] = None, report
    else:
        found["driver_report"] = report.splitlines()
    found["engine_count"], why = _nvdec_engines()
    if why:
        reasons["nvdec.engine_count"] = why
    found["mig_mode"], why = _mig_mode()
    if why:
        reasons["nvdec.mig_mode"] = why
    ctx.publish({"nvdec": found}, reasons)


def step_inputs(ctx: StepContext) -> None:
    from signstream.benchmarks.loaders import make_inputs

    plan = INPUTS["cpu" if ctx.cuda_reason else "cuda"]
    t0 = time.perf_counter()
    made = make_inputs(
        ctx.work, quick=False, videos=ctx.clips or plan["clips"], glosses=plan["glosses"], codecs=("vp9",)
    )
    ctx.publish(
        {
            "inputs": {
                "clips": made["videos"],
                "frames": made["frames"],
                "height": 210,
                "width": 260,
                "codec": "vp9",
                "seconds": round(time.perf_counter() - t0, 1),
            }
        }
    )


def _loader_row(ctx: StepContext, index: int, backend: str, workers: int | None, options: dict) -> None:
    """One throughput row: float [B, 3, T, 224, 224] on CUDA, best of 3 epochs over every clip."""
    from signstream.benchmarks.loaders import loader_case

    case = {
        "name": f"loaders[{index}]",
        "kind": "loader",
        "backend": backend,
        "device": "cuda",
        "codec": "vp9",
        "source": str(ctx.shards / "dev"),
        "batch_size": LOADER_BATCH,
        "workers": workers,
        "repeats": 3,
        "options": options,
    }
    result = loader_case(case)
    label, asked = LOADER_ROWS[index]
    reasons = {}
    if asked is not None and result["threads"] != asked:
        reasons[f"loaders[{index}].threads"] = f"asked for {asked} thread(s), the loader ran {result['threads']}"
    if result["skipped"]:
        reasons[f"loaders[{index}].skipped"] = f"{result['skipped']} clip(s) skipped by the loader"
    ctx.publish(
        {
            f"loaders[{index}]": {
                "backend": label,
                "threads": result["threads"],
                "codec": "vp9",
                "frames_per_s": round(result["fps"], 1),
            }
        },
        reasons,
    )


def _dali_threads(n: int | None) -> dict:
    return {"decoder_threads": n} if n is not None else {}


def step_loaders_dali_1(ctx: StepContext) -> None:
    _loader_row(ctx, 0, "dali", 1, _dali_threads(1))


def step_loaders_dali_default(ctx: StepContext) -> None:
    _loader_row(ctx, 1, "dali", None, {})


def step_loaders_pyav_cuda(ctx: StepContext) -> None:
    from signstream.loaders.cpu import available_cores

    _loader_row(ctx, 2, "pyav", available_cores(), {})


def step_extraction(ctx: StepContext) -> None:
    """i3d and s3d at 224 px, fp32 and bf16: DALI NVDEC end to end ÷ backbone only, one row at a time."""
    import gc

    import torch

    from signstream.benchmarks.pipeline import extraction_ratio

    for i, (backbone, precision) in enumerate(EXTRACTION_ROWS):
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        try:
            r = extraction_ratio(
                ctx.shards,
                SIZE,
                None,
                backbone=backbone,
                stop_after=None,
                device="cuda",
                backend="dali",
                precision=dtype,
                split="dev",
            )
        except Exception as exc:  # recorded with its row, and the next row still runs
            ctx.publish(reasons={f"extraction[{i}]": f"failed: {type(exc).__name__}: {exc}"[:400]})
            continue
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        ctx.publish(
            {
                f"extraction[{i}]": {
                    "backbone": backbone,
                    "precision": precision,
                    "image_size": SIZE,
                    "e2e_frames_per_s": round(r["extract_e2e_fps"], 1),
                    "backbone_only_frames_per_s": round(r["extract_backbone_only_fps"], 1),
                    "ratio": round(r["extract_ratio"], 3),
                    "peak_gpu_mib": round(r["extract_peak_gpu_mib"], 1),
                }
            }
        )


def step_finetune(ctx: StepContext) -> None:
    from signstream.benchmarks.pipeline import finetune_ratio

    r = finetune_ratio(
        ctx.shards, SIZE, 6, stop_after=None, device="cuda", backend="dali", num_workers=None, split="dev"
    )
    ctx.publish(
        {
            "finetune": {
                "step_s_from_loader": round(r["finetune_step_s_e2e"], 4),
                "step_s_cached_batch": round(r["finetune_step_s_cached"], 4),
            }
        }
    )


def step_cuda_tests(ctx: StepContext) -> None:
    """``pytest -m cuda`` over the repository's tests; SIGINT before the limit so it still reports."""
    import signstream

    root = Path(signstream.__file__).resolve().parent
    if not (root / "tests").is_dir():
        return ctx.publish(reasons={"cuda_tests": f"no tests/ folder beside the package ({root})"})
    xml = ctx.logs / "cuda_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        f"--junitxml={xml}",
        "tests",
    ]
    proc = subprocess.Popen(cmd, cwd=root)
    interrupted = False
    try:
        rc = proc.wait(timeout=max(1.0, ctx.limit - PYTEST_GRACE_S))
    except subprocess.TimeoutExpired:
        interrupted = True
        proc.send_signal(signal.SIGINT)  # pytest stops, then writes its summary and the XML
        try:
            rc = proc.wait(timeout=PYTEST_GRACE_S - 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    if not xml.exists():
        why = f"pytest wrote no report (exit {rc}): {_last_line(ctx.logs / f'{ctx.name}.log')}"
        return ctx.publish(reasons={"cuda_tests": why})
    reasons = (
        {
            "cuda_tests.interrupted": f"pytest was interrupted at {ctx.limit - PYTEST_GRACE_S:.0f} s: "
            "the counts cover only the tests that ran"
        }
        if interrupted
        else {}
    )
    ctx.publish({"cuda_tests": junit_counts(xml)}, reasons)


STEP_FUNCTIONS: dict[str, Callable[[StepContext], None]] = {
    "env": step_env,
    "nvdec": step_nvdec,
    "inputs": step_inputs,
    "loaders_dali_1": step_loaders_dali_1,
    "loaders_dali_default": step_loaders_dali_default,
    "loaders_pyav_cuda": step_loaders_pyav_cuda,
    "extraction": step_extraction,
    "finetune": step_finetune,
    "cuda_tests": step_cuda_tests,
}


# --------------------------------------------------------------------------- report
def _f(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def _goal(value: float | None, ok: bool, text: str) -> str:
    return "" if value is None else f"{text}: {'met' if ok else 'NOT met'}"


def _loader_lines(doc: dict) -> list[str]:
    inp = doc["inputs"]
    lines = [
        f"### Loaders: {_f(inp['clips'])} clips, {_f(inp['frames'])} frames of {_f(inp['height'])}×"
        f"{_f(inp['width'])} VP9 → float [B, 3, T, {SIZE}, {SIZE}] on the GPU, batch {LOADER_BATCH}, "
        "best of 3 epochs",
        "",
        "| backend | threads | codec | frames/s | note |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(doc["loaders"]):
        fps, nvdec = r["frames_per_s"], r["backend"] == "dali-nvdec"
        note = (
            _goal(
                fps, fps is not None and fps >= GOALS["nvdec_frames_per_s"], f"goal ≥ {GOALS['nvdec_frames_per_s']:,}"
            )
            if nvdec and r["threads"] != 1
            else ""
        )
        lines.append(
            f"| {r['backend']} | {_f(r['threads'])} | {r['codec']} | {_f(fps, ',.0f')} "
            f"| {note or _why(doc, f'loaders[{i}]')} |"
        )
    return lines


def _extraction_lines(doc: dict) -> list[str]:
    lines = [
        "",
        "### Extraction: DALI NVDEC + `extract_features` (dense) ÷ the same calls on random tensors of the same shapes",
        "",
        "| backbone | precision | size | e2e frames/s | backbone-only frames/s | ratio | peak GPU MiB (torch) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(doc["extraction"]):
        ratio = r["ratio"]
        note = (
            _goal(ratio, ratio is not None and ratio >= GOALS["bf16_ratio"], f"goal ≥ {GOALS['bf16_ratio']}")
            if r["precision"] == "bf16"
            else ""
        )
        lines.append(
            f"| {r['backbone']} | {r['precision']} | {r['image_size']} | {_f(r['e2e_frames_per_s'], ',.0f')} "
            f"| {_f(r['backbone_only_frames_per_s'], ',.0f')} | {_f(ratio, '.3f')} "
            f"| {_f(r['peak_gpu_mib'], ',.0f')} | {note or _why(doc, f'extraction[{i}]')} |"
        )
    return lines


def _summary_lines(doc: dict) -> list[str]:
    t, nv, ft = doc["cuda_tests"], doc["nvdec"], doc["finetune"]
    lines = [
        "",
        f"- cuda tests (`pytest -m cuda`): {_f(t['passed'])} passed, {_f(t['failed'])} failed, "
        f"{_f(t['skipped'])} skipped {_why(doc, 'cuda_tests')}",
        f"- NVDEC: {_f(nv['engine_count'])} engine(s), MIG mode {_f(nv['mig_mode'])} {_why(doc, 'nvdec')}",
    ]
    lines += [f"    - {line}" for line in nv["driver_report"] or []]
    load, cached = ft["step_s_from_loader"], ft["step_s_cached_batch"]
    line = (
        f"- fine-tuning step (S3D, {SIZE} px, batch 4, ≤ 64 frames, fp32, DALI train mode): "
        f"{_f(load, '.3f')} s from the loader, {_f(cached, '.3f')} s on one cached batch"
    )
    if load is not None and cached:
        extra = load / cached - 1
        line += f"; the loader adds {extra:.1%} ({_goal(extra, extra < GOALS['loader_overhead'], 'goal < 10 %')})"
    lines.append(f"{line} {_why(doc, 'finetune')}")
    minutes = doc["phoenix2014_i3d_extraction_minutes"]
    line = f"- PHOENIX-2014 I3D extraction ({PHOENIX2014_FRAMES:,} frames): {_f(minutes)} min"
    if minutes is not None:
        line += (
            f" = {doc['phoenix2014_i3d_extraction_basis']} "
            f"({_goal(minutes, minutes <= GOALS['phoenix_minutes'], 'goal ≤ 2 min')})"
        )
    lines.append(f"{line} {_why(doc, 'phoenix2014_i3d_extraction_minutes')}")
    return lines


def _why(doc: dict, path: str) -> str:
    found = [v if k == path else f"{k[len(path) + 1 :]}: {v}" for k, v in doc["reasons"].items() if _under(k, path)]
    return f"({'; '.join(found)})" if found else ""


def markdown(doc: dict) -> str:
    """``gpu.md``: the document as one Markdown section."""
    steps = doc["steps"]
    spent = sum(s.get("seconds", 0) for s in steps.values())
    lines = [
        "## GPU proof (`bash benchmarks/gpu_proof.sh`)",
        "",
        f"{_f(doc['device'])} {_why(doc, 'device')} · {doc['date']} · torch {_f(doc['torch_version'])} · "
        f"DALI {_f(doc['dali_version'])} · steps took {spent:.0f} s",
        *_summary_lines(doc),
        "",
        *_loader_lines(doc),
        *_extraction_lines(doc),
        "",
        "### Steps",
        "",
        "| step | status | seconds | limit s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {s['status']} | {_f(s.get('seconds'))} | {_f(s.get('limit_s'))} |" for name, s in steps.items()
    ]
    if doc["reasons"]:
        lines += ["", "Figures not taken, and notes:", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(doc["reasons"].items())]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI
def _limits(items: list[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in STEP_NAMES or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            raise argparse.ArgumentTypeError(
                f"--limit takes STEP=SECONDS with STEP one of {', '.join(STEP_NAMES)}, got {item!r}"
            )
        limits[name] = float(seconds)
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for gpu.json, gpu.md and gpu-logs/")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA steps (each with that reason)")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help=f"override a step's time limit; steps: {', '.join(STEP_NAMES)}",
    )
    parser.add_argument("--clips", type=int, help="synthetic clips to make (default 24 with CUDA, 2 without)")
    for hidden in ("--step", "--step-limit", "--work", "--cuda-reason"):  # internal: one step's process
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        ctx = StepContext(
            args.step, Path(args.out) / LOGS, Path(args.work), float(args.step_limit), args.clips, args.cuda_reason
        )
        STEP_FUNCTIONS[args.step](ctx)
        return 0
    try:
        limits = _limits(args.limit)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    doc = run(args.out, no_cuda=args.no_cuda, limits=limits, clips=args.clips)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
