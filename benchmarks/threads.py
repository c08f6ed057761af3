"""Thread-policy benchmark: fine-tuning frames/s beside a competing process.

The real ``finetune_ctc`` recipe (the demo's preset: S3D, 32 px) runs a fixed number of steps while another
process keeps two threads busy. Settings alternate in the same run: ``before`` (one loader worker,
``OMP_NUM_THREADS`` = every core), ``after`` (the same worker, threads by the recipe's policy) and
``after_no_worker`` (the demo's preset as shipped); the median frames/s of each counts. Why: docs/design/benchmarks.md

Run: ``python -m signstream.benchmarks.threads --out DIR [--quick]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from signstream.benchmarks.report import quick_cli, save_report
from signstream.loaders.cpu import available_cores

PRESET = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "finetune_ctc-synthetic-s3d.yaml"
COMPETITOR = (
    "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n"
)


def _corpus(tmp: Path, n: int) -> Path:
    from signstream.tools.pack import pack_corpus
    from signstream.tools.synth import make_corpus

    root = make_corpus(tmp / "corpus", layout="phoenix2014", seed=3, train=n, dev=2, test=2, vocab=24)
    pack_corpus("phoenix2014", tmp / "shards", root=root, progress=False)
    return tmp / "shards"


def finetune_fps(shards: Path, out: Path, steps: int, env: dict, workers: int) -> dict:
    """One short fine-tuning run of the real recipe; its train frames/s and thread log line."""
    cmd = [
        sys.executable,
        "-m",
        "signstream.tools.cli",
        "finetune_ctc",
        "--config",
        str(PRESET),
        f"shards={shards}",
        f"out={out}",
        "epochs=1",
        f"max_steps_per_epoch={steps}",
        "resume=false",
        f"num_workers={workers}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"finetune_ctc failed: {proc.stderr.strip().splitlines()[-1:]}")
    record = json.loads((out / "metrics.json").read_text())["history"][0]
    policy = next((ln for ln in proc.stdout.splitlines() if ln.startswith("torch threads:")), "")
    return {"frames_per_s": record["frames_per_s"], "frames": record["frames"], "log": policy}


def run(out: str | Path, quick: bool = False) -> dict:
    """Alternate the two settings beside a 2-thread competitor; returns (and writes) the figures."""
    out, cores = Path(out), available_cores()
    steps, rounds = (4, 1) if quick else (20, 2)
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    settings = {
        "before": ({**base, "OMP_NUM_THREADS": str(cores)}, 1),
        "after": (base, 1),
        "after_no_worker": (base, 0),
    }
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = _corpus(tmp, 12 if quick else 60)
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=base)
        try:
            for i in range(rounds):
                for name, (env, workers) in settings.items():
                    runs[name].append(finetune_fps(shards, tmp / f"{name}{i}", steps, env, workers))
        finally:
            competitor.kill()
            competitor.wait()
    fps = {name: statistics.median(r["frames_per_s"] for r in rs) for name, rs in runs.items()}
    result = {
        "cores": cores,
        "steps": steps,
        "rounds": rounds,
        "competitor_threads": 2,
        **{f"fps_{name}": v for name, v in fps.items()},
        "speedup": round(fps["after"] / fps["before"], 2) if fps["before"] else None,
        "speedup_no_worker": round(fps["after_no_worker"] / fps["before"], 2) if fps["before"] else None,
        **{f"log_{name}": rs[0]["log"] for name, rs in runs.items()},
        "runs": runs,
    }
    save_report(out, "threads", result, render_markdown)
    return result


def render_markdown(r: dict) -> str:
    """Markdown table of the thread-policy figures."""
    return "\n".join(
        [
            f"## Thread policy (fine-tuning, {r['cores']} cores, beside a 2-thread competing process)",
            "",
            "| setting | torch threads | fine-tuning frames/s |",
            "|---|---|---|",
            f"| before: 1 loader worker, OMP_NUM_THREADS={r['cores']} | "
            f"{r['log_before'].removeprefix('torch threads: ')} | {r['fps_before']:.0f} |",
            f"| after: 1 loader worker, the policy | {r['log_after'].removeprefix('torch threads: ')} "
            f"| {r['fps_after']:.0f} |",
            f"| after: the demo preset (no worker), the policy | "
            f"{r['log_after_no_worker'].removeprefix('torch threads: ')} | {r['fps_after_no_worker']:.0f} |",
            f"| after ÷ before (same loader) | | {r['speedup']:.2f} |",
            f"| demo preset ÷ before | | {r['speedup_no_worker']:.2f} |",
            "",
            f"Median of {r['rounds']} alternating run(s) of {r['steps']} steps each.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    quick_cli(__doc__, run, render_markdown, argv)


if __name__ == "__main__":
    main()
