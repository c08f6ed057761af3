"""Benchmark history (one JSON line per benchmark per run) and ``signstream bench compare``.

After each run ``make bench`` appends every benchmark's headline figures (value, which way is better,
per-round values where it ran rounds), keyed by commit, UTC date, machine fingerprint and quick flag.
Key invariant: a line is one ``write`` + ``fsync``, so an interrupted run leaves no partial line, and a
malformed line is skipped with a warning naming its number. ``compare`` sets the latest run beside an
earlier one on the same machine only, and flags a figure that moved the wrong way beyond its noise band.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from signstream import SignstreamError
from signstream.loaders.fileio import atomic_save

HELP = "benchmark history: compare the latest `make bench` run with an earlier one on this machine"
HISTORY = "benchmarks/history.jsonl"
FLOOR = 0.05  # the smallest noise band: run-to-run jitter of a quiet machine
GIT_TIMEOUT_S = 10
GPU_QUERY_TIMEOUT_S = 10
# results that the benchmarks themselves rewrite: a run must not call its own commit dirty
OWN_OUTPUTS = ("benchmarks/results", "benchmarks/history.jsonl")
REPO = Path(__file__).resolve().parents[1]

Figures = dict[str, dict[str, Any]]


def _number(x: Any) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _get(doc: Any, path: str) -> Any:
    for key in path.split("."):
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _add(figs: Figures, name: str, value: Any, better: str, rounds: Iterable[Any] = ()) -> None:
    """Add one figure when its value is a finite number (a skipped row has none)."""
    value = _number(value)
    if value is None:
        return
    figs[name] = {"value": value, "better": better}
    kept = [r for r in map(_number, rounds) if r is not None]
    if len(kept) > 1:
        figs[name]["rounds"] = kept


# Flat figures per benchmark: (dotted path in its result JSON, which way is better).
FLAT = {
    "pack": [
        ("pack_fps_1worker", "higher"),
        ("pack_fps_2workers", "higher"),
        ("speedup_2_vs_1_workers", "higher"),
        ("pack_vs_png_read_per_core", "higher"),
        ("size_ratio", "lower"),
        ("mean_psnr_db", "higher"),
    ],
    "pipeline": [
        ("extract_ratio", "higher"),
        ("extract_e2e_fps", "higher"),
        ("extract_backbone_only_fps", "higher"),
        ("extract_112.extract_ratio", "higher"),
        ("extract_2_vs_1", "higher"),
        ("extract_peak_gpu_mib", "lower"),
        ("finetune_ratio", "lower"),  # end-to-end step time / cached-batch step time
        ("demo.total_seconds", "lower"),
    ],
    "remote": [
        ("fps.local", "higher"),
        ("fps.http", "higher"),
        ("fps.s3", "higher"),
        ("ratio_vs_local.http", "higher"),
        ("ratio_vs_local.s3", "higher"),
        ("extraction.seconds_1_process", "lower"),
        ("extraction.seconds_2_machines", "lower"),
    ],
    "threads": [("speedup", "higher"), ("speedup_no_worker", "higher")],
}


def _loaders(doc: dict, figs: Figures) -> None:
    for key, value in (doc.get("summary") or {}).items():
        if key != "pngdir_fps":  # the pngdir row's own fps, recorded with the rows
            _add(figs, key, value, "higher")
    for row in doc.get("rows") or []:
        if not isinstance(row, dict) or row.get("kind") != "loader":
            continue
        rounds = [r for r in row.get("rounds") or [] if isinstance(r, dict)]
        for key, better in (("fps", "higher"), ("cpu_ms_per_frame", "lower")):
            _add(figs, f"{row.get('name')} {key}", row.get(key), better, [r.get(key) for r in rounds])
        _add(figs, f"{row.get('name')} peak_pss_mib", row.get("peak_pss_mib"), "lower")


def _models(doc: dict, figs: Figures) -> None:
    for row in doc.get("throughput") or []:
        if not isinstance(row, dict) or row.get("error"):
            continue
        name = f"{row.get('model')} {row.get('device')} {row.get('dtype')} {row.get('size')}px b{row.get('batch')}"
        _add(figs, f"{name} frames_per_s", row.get("frames_per_s"), "higher")
        peak = "cuda_max_allocated_mib" if row.get("cuda_max_allocated_mib") is not None else "peak_rss_growth_mib"
        _add(figs, f"{name} {peak}", row.get(peak), "lower")
    for row in _get(doc, "dense.summary") or []:
        if isinstance(row, dict):
            _add(figs, f"dense {row.get('setting')} {row.get('frames')} growth_ratio", row.get("growth_ratio"), "lower")


def _threads(doc: dict, figs: Figures) -> None:
    for key in ("before", "after", "after_no_worker"):
        runs = [r for r in _get(doc, f"runs.{key}") or [] if isinstance(r, dict)]
        _add(figs, f"fps_{key}", doc.get(f"fps_{key}"), "higher", [r.get("frames_per_s") for r in runs])


EXTRA: dict[str, Callable[[dict, Figures], None]] = {"loaders": _loaders, "models": _models, "threads": _threads}


def figures(benchmark: str, doc: dict) -> Figures:
    """The headline figures of one benchmark's result JSON.

    Args:
        benchmark: its name (``pack``, ``loaders``, ...); an unknown one gives no figures.
        doc: the parsed ``<benchmark>.json``.

    Returns:
        ``{name: {"value": v, "better": "higher" | "lower", "rounds": [...]}}``; ``rounds`` only
        where the benchmark ran repeated rounds. Figures the run did not take are absent.
    """
    figs: Figures = {}
    if not isinstance(doc, dict):
        return figs
    if benchmark in EXTRA:
        EXTRA[benchmark](doc, figs)
    for path, better in FLAT.get(benchmark, []):
        _add(figs, path, _get(doc, path), better)
    return figs


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """A command's stripped stdout, or None when it is missing, fails or outlives its bound."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit(repo: str | os.PathLike = REPO) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout at ``repo``; ``"unknown"``/None outside git.

    The benchmarks' own outputs (results, this history) do not make a checkout dirty.
    """
    sha = _run(["git", "rev-parse", "HEAD"], cwd=Path(repo))
    if not sha:
        return {"commit": "unknown", "dirty": None}
    status = _run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "."] + [f":(exclude){p}" for p in OWN_OUTPUTS],
        cwd=Path(repo),
    )
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return round(kib / 2**20)  # whole GiB: the kernel's own reservations wobble below that


def _version(*dists: str) -> str | None:
    """The installed version of the first distribution found (DALI ships under a CUDA-specific name)."""
    names = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    for want in dists:
        found = [v for n, v in sorted(names.items()) if n == want or (want.endswith("*") and n.startswith(want[:-1]))]
        if found:
            return found[0]
    return None


def machine() -> dict[str, Any]:
    """The machine fingerprint: readable fields plus ``id``, a short hash of them.

    CPU model, core count, memory (GiB), GPU name(s) (``nvidia-smi``, bounded; None without one),
    torch and DALI versions. Read without importing torch or DALI.
    """
    smi = shutil.which("nvidia-smi")
    gpu = _run([smi, "--query-gpu=name", "--format=csv,noheader"]) if smi else None
    fields = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": ", ".join(gpu.splitlines()) if gpu else None,
        "torch": _version("torch"),
        "dali": _version("nvidia-dali*"),
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return {"id": digest, **fields}


def append(path: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one JSON line: a single ``write`` then ``fsync``, so no partial line survives."""
    path = Path(path)
    line = json.dumps(entry, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        # a line cut by an earlier crash must not swallow this one: start it on a line of its own
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        data = line.encode()
        if os.write(fd, data) != len(data):
            raise OSError(f"short write appending to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _well_formed(entry: Any) -> bool:
    """An entry compare can use: benchmark, machine id, and figures with a finite value and numeric rounds."""
    if not (isinstance(entry, dict) and isinstance(entry.get("benchmark"), str)):
        return False
    figs = entry.get("figures")
    return (
        isinstance(_get(entry, "machine.id"), str)
        and isinstance(figs, dict)
        and all(
            isinstance(f, dict)
            and _number(f.get("value")) is not None
            and all(_number(r) is not None for r in f.get("rounds") or [])
            for f in figs.values()
        )
    )


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every well-formed entry of a history file, oldest first; a missing file is an empty history.

    A malformed line (cut, not JSON, missing keys) is skipped with a warning naming the file and line number.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise SignstreamError(f"history {path} is a directory, not a file")
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if _well_formed(entry):
                entries.append(entry)
            else:
                warnings.warn(f"{path}:{number}: malformed history line skipped", stacklevel=2)
    return entries


def record(
    results: str | os.PathLike, benchmarks: Iterable[str], history: str | os.PathLike, quick: bool = False
) -> int:
    """Append one history line per benchmark whose ``<name>.json`` is in ``results``; returns how many.

    Called by ``run_all`` after a run with the benchmarks that succeeded. An unreadable result is
    a warning, not a failure: the run's own results are already written.
    """
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = {"run": uuid.uuid4().hex[:12], "date": when, **commit(), "quick": bool(quick), "machine": machine()}
    written = 0
    for name in benchmarks:
        path = Path(results) / f"{name}.json"
        try:
            figs = figures(name, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path}: not recorded in the history ({exc})", stacklevel=2)
            continue
        if figs:
            append(history, {**base, "benchmark": name, "figures": figs})
            written += 1
    return written


def spread(fig: dict[str, Any]) -> float:
    """Relative spread of a figure's rounds, (max - min) / |median|; 0 without rounds."""
    rounds = fig.get("rounds") or []
    if len(rounds) < 2:
        return 0.0
    middle = statistics.median(rounds)
    return (max(rounds) - min(rounds)) / abs(middle) if middle else 0.0


def judge(old: dict[str, Any], new: dict[str, Any], floor: float = FLOOR) -> dict[str, Any]:
    """Set one figure of a new run beside the same figure of an earlier run.

    Returns:
        ``{"change": (new - old) / |old| or None, "band": b, "verdict": v}`` where the band is
        ``max(floor, spread of either run's rounds)`` and ``v`` is ``"regressed"`` or ``"improved"``
        when the figure moved beyond the band (the direction the figure's ``better`` names), else
        ``"within noise"``.
    """
    band = max(floor, spread(old), spread(new))
    if not old["value"]:
        return {"change": None, "band": band, "verdict": "within noise"}
    change = (new["value"] - old["value"]) / abs(old["value"])
    worse = -change if new.get("better") == "higher" else change
    verdict = "regressed" if worse > band else "improved" if worse < -band else "within noise"
    return {"change": change, "band": band, "verdict": verdict}


def _on(entries: list[dict], machine_id: str, benchmark: str | None) -> list[dict]:
    return [
        e for e in entries if e["machine"]["id"] == machine_id and (benchmark is None or e["benchmark"] == benchmark)
    ]


def pairs(
    entries: list[dict], machine_id: str, benchmark: str | None = None, baseline: str | None = None
) -> list[tuple[dict, dict | None]]:
    """(latest entry, entry to compare it with or None) per benchmark of the latest run on one machine.

    The earlier entry is the previous run of the same benchmark with the same quick flag on the same
    machine fingerprint, or with ``baseline`` the latest earlier one whose commit starts with it.
    Runs on other machines are never compared. Raises :class:`SignstreamError` when there is nothing to compare.
    """
    mine = _on(entries, machine_id, benchmark)
    what = f"run of benchmark {benchmark!r}" if benchmark else "benchmark run"
    if not mine:
        raise SignstreamError(f"no {what} on machine {machine_id} in the history")
    last_run = mine[-1].get("run")
    found = []
    for i, new in enumerate(mine):
        if new.get("run") != last_run:
            continue
        earlier = [
            e
            for e in mine[:i]
            if e["benchmark"] == new["benchmark"] and e.get("quick") == new.get("quick") and e.get("run") != last_run
        ]
        if baseline:
            earlier = [e for e in earlier if str(e.get("commit", "")).startswith(baseline)]
        found.append((new, earlier[-1] if earlier else None))
    if all(old is None for _, old in found):
        of = f" of commit {baseline}" if baseline else ""
        raise SignstreamError(f"no earlier {what}{of} on machine {machine_id} to compare with")
    return found


def compare(new: dict, old: dict, floor: float = FLOOR) -> list[dict[str, Any]]:
    """One row per figure of two entries of the same benchmark (see :func:`judge`).

    A figure only one of them has is listed with verdict ``"new"`` or ``"gone"``, never as a regression.
    """
    rows = []
    for name in list(new["figures"]) + [n for n in old["figures"] if n not in new["figures"]]:
        a, b = old["figures"].get(name), new["figures"].get(name)
        row = {"figure": name, "old": a and a["value"], "new": b and b["value"], "better": (b or a).get("better")}
        if a and b:
            row.update(judge(a, b, floor))
        else:
            row.update(change=None, band=None, verdict="new" if b else "gone")
        rows.append(row)
    return rows


def _label(entry: dict) -> str:
    star = "*" if entry.get("dirty") else ""
    return f"{str(entry.get('commit', 'unknown'))[:8]}{star} {str(entry.get('date', ''))[:10]}"


def _num(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x * 100:+.1f}%" if pct else f"{x:.4g}"


def report(found: list[tuple[dict, dict | None]], floor: float = FLOOR) -> tuple[str, int]:
    """The comparison as text, and how many figures regressed beyond their noise band."""
    lines, regressed = [], 0
    for new, old in found:
        if old is None:
            lines.append(f"{new['benchmark']}: no earlier run to compare with\n")
            continue
        lines.append(f"{new['benchmark']}: {_label(old)} -> {_label(new)} (* = uncommitted changes)")
        rows = compare(new, old, floor)
        width = max(len(r["figure"]) for r in rows)
        lines.append(f"  {'figure':<{width}}  {'before':>10}  {'after':>10}  {'change':>8}  {'band':>6}  verdict")
        for r in rows:
            band = "-" if r["band"] is None else f"±{r['band'] * 100:.0f}%"
            flag = "REGRESSED" if r["verdict"] == "regressed" else r["verdict"]
            lines.append(
                f"  {r['figure']:<{width}}  {_num(r['old']):>10}  {_num(r['new']):>10}  "
                f"{_num(r['change'], True):>8}  {band:>6}  {flag} ({r['better']} is better)"
            )
            regressed += r["verdict"] == "regressed"
        lines.append("")
    lines.append(f"{regressed} figure(s) regressed beyond their noise band" if regressed else "no regression")
    return "\n".join(lines), regressed


def plot(entries: list[dict], path: str | os.PathLike, machine_id: str, benchmark: str | None = None) -> Path:
    """Draw the history of one machine as a PNG, one panel per figure (rounds as dots); returns ``path``."""
    mine = _on(entries, machine_id, benchmark)
    if not mine:
        raise SignstreamError(f"nothing to plot: no run on machine {machine_id} in the history")
    path = Path(path)
    if not path.parent.is_dir():
        raise SignstreamError(f"--plot {path}: folder {path.parent} does not exist")
    mine = [e for e in mine if e.get("quick") == mine[-1].get("quick")]  # quick sizes are not comparable
    runs = list(dict.fromkeys(e.get("run") for e in mine))
    labels = {e.get("run"): _label(e) for e in mine}
    series: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for e in mine:
        for name, fig in e["figures"].items():
            series.setdefault((e["benchmark"], name), []).append((runs.index(e.get("run")), fig))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.6 * rows), squeeze=False, layout="constrained")
    for ax, ((bench, name), points) in zip(axes.flat, series.items()):
        ax.plot([x for x, _ in points], [f["value"] for _, f in points], marker="o")
        for x, f in points:
            ax.scatter([x] * len(f.get("rounds", [])), f.get("rounds", []), s=8, color="grey")
        arrow = "higher" if points[-1][1].get("better") == "higher" else "lower"
        ax.set_title(textwrap.fill(f"{bench}: {name} ({arrow} is better)", 70), fontsize=8)
        ax.set_xticks(range(len(runs)), [labels[r] for r in runs], rotation=30, ha="right", fontsize=6)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    fig.suptitle(f"benchmark history, machine {machine_id}")
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return path


def _floor(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's own actions (``compare``)."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    about = "latest run vs an earlier one on this machine; exit 1 on a regression, 2 with nothing to compare"
    p = sub.add_parser("compare", help=about, description=about)
    p.add_argument("--history", default=HISTORY, help=f"the history file (default {HISTORY})")
    p.add_argument("--benchmark", help="only this benchmark (default: every benchmark of the latest run)")
    p.add_argument("--baseline", metavar="COMMIT", help="compare with the latest run of this commit (a prefix)")
    p.add_argument("--machine", metavar="ID", help="machine fingerprint id (default: this machine's)")
    p.add_argument("--floor", type=_floor, default=FLOOR, help=f"smallest noise band (default {FLOOR})")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the history, one panel per figure")


def run(args: argparse.Namespace) -> int:
    """``signstream bench compare``: 0 without a regression, 1 with one, 2 (one line) with nothing to compare."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = read(args.history)
    for w in caught:
        print(f"signstream bench: warning: {w.message}", file=sys.stderr)
    machine_id = args.machine or machine()["id"]
    try:
        if args.plot:
            print(f"plot: {plot(entries, args.plot, machine_id, args.benchmark)}")
        found = pairs(entries, machine_id, args.benchmark, args.baseline)
    except SignstreamError as exc:  # name the history file the user would look in
        raise SignstreamError(f"{args.history}: {exc}") from None
    text, regressed = report(found, args.floor)
    print(text)
    return 1 if regressed else 0
