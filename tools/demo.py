"""``make demo``: the whole pipeline end to end on the built-in synthetic corpus.

Chains the user's commands at a small scale on CPU (synth, pack, verify, finetune_ctc,
extract_features, train_head), each recipe in its own subprocess; prints a table and writes
``<out>/summary.json`` and ``<out>/report.png``. Stages and outputs: docs/design/demo.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders.fileio import write_json
from signstream.recipes.config import peak_rss_mb
from signstream.recipes.threads import apply_thread_policy
from signstream.tools.demo_report import write_report

HELP = "run every stage end to end on a synthetic corpus (synth to WER, about 12 minutes on a quiet 2-core box)"
CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "configs"


class Stages:
    """Times stages and collects their figures for the final table."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn, frames_of=None, memory_of=None):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        frames = frames_of(result) if frames_of else None
        memory = memory_of(result) if memory_of else max(peak_rss_mb(), peak_rss_mb(children=True))
        self.rows.append(
            {
                "stage": name,
                "seconds": round(seconds, 1),
                "frames": frames,
                "frames_per_s": round(frames / seconds, 1) if frames else None,
                "peak_rss_mb": round(memory, 1) if memory else None,
            }
        )
        return result


def recipe(name: str, preset: str, *overrides: str) -> None:
    """Run a recipe in a subprocess (what ``accelerate launch`` does with one process)."""
    cmd = [sys.executable, "-m", "signstream.tools.cli", name, "--config", str(CONFIGS / preset), *overrides]
    print("$ signstream " + " ".join([name, "--config", f"recipes/configs/{preset}", *overrides]), flush=True)
    # Each recipe applies the thread policy itself; a user's OMP_NUM_THREADS passes through.
    if subprocess.run(cmd, env=dict(os.environ)).returncode != 0:
        raise SignstreamError(f"stage {name} failed (command: {' '.join(cmd)})")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_pipeline(out: Path, args, stages: Stages) -> dict:
    """All stages; returns the paths of their outputs."""
    from signstream.tools.pack import pack_corpus
    from signstream.tools.synth import make_corpus
    from signstream.tools.verify import verify

    p = {k: out / k for k in ("corpus", "shards", "finetune", "features", "features_random", "head", "head_random")}
    root = stages.run(
        "synth",
        lambda: make_corpus(
            p["corpus"],
            layout="phoenix2014",
            seed=args.seed,
            train=args.train,
            dev=args.dev,
            test=args.test,
            vocab=args.vocab,
            overwrite=True,
        ),
    )
    stages.run(
        "pack",
        lambda: pack_corpus("phoenix2014", p["shards"], root=root, overwrite=True),
        frames_of=lambda r: sum(m["totals"]["frames"] for m in r["splits"].values()),
    )
    report = stages.run(
        "verify",
        lambda: verify(p["shards"], decode=True),
        frames_of=lambda r: sum(s["frames"] for s in r["splits"].values()),
    )
    if not report["ok"]:
        raise SignstreamError("verify found problems: " + "; ".join(report["problems"][:3]))
    common = [f"shards={p['shards']}", f"seed={args.seed}"]
    stages.run(
        "finetune",
        lambda: recipe(
            "finetune_ctc",
            "finetune_ctc-synthetic-s3d.yaml",
            *common,
            f"out={p['finetune']}",
            "resume=false",
            "overwrite=true",
            *([f"epochs={args.epochs}"] if args.epochs else []),
        ),
        frames_of=lambda _: _train_frames(p["finetune"]),
        memory_of=lambda _: _json(p["finetune"] / "metrics.json")["peak_rss_mb"],
    )
    for key, extra in (
        ("features", f"checkpoint={p['finetune'] / 'best.safetensors'}"),
        ("features_random", "checkpoint=none"),
    ):
        stages.run(
            f"extract{'' if key == 'features' else ' (random)'}",
            lambda key=key, extra=extra: recipe(
                "extract_features",
                "extract-synthetic.yaml",
                *common,
                extra,
                f"out={p[key]}",
                "progress=false",
                "overwrite=true",
            ),
            frames_of=lambda _, key=key: sum(s["frames"] for s in _json(p[key] / "summary.json")["splits"].values()),
            memory_of=lambda _, key=key: _json(p[key] / "summary.json")["peak_memory_per_rank"][0]["peak_rss_mb"],
        )
    for key, feats in (("head", "features"), ("head_random", "features_random")):
        stages.run(
            f"head{'' if key == 'head' else ' (random)'}",
            lambda key=key, feats=feats: recipe(
                "train_head",
                "train_head-synthetic.yaml",
                f"features={p[feats]}",
                f"out={p[key]}",
                f"seed={args.seed}",
                "resume=false",
                "overwrite=true",
            ),
            memory_of=lambda _, key=key: _json(p[key] / "metrics.json")["peak_rss_mb"],
        )
    return {**{k: str(v) for k, v in p.items()}, "corpus": str(root)}


def _train_frames(run_dir: Path) -> int:
    return sum(h["frames"] for h in _json(run_dir / "metrics.json")["history"])


def print_table(summary: dict) -> None:
    print("\n=== signstream demo: summary ===")
    print(
        f"test WER {summary['test_wer']:.1f}%  (dev {summary['dev_wer']:.1f}%)   "
        f"baseline, random-init features: test {summary['baseline_test_wer']:.1f}% "
        f"(dev {summary['baseline_dev_wer']:.1f}%)   chance ~100%"
    )
    print(f"\n{'stage':<18} {'seconds':>8} {'frames/s':>10} {'peak RSS MB':>12}")
    for r in summary["stages"]:
        fps = f"{r['frames_per_s']:.0f}" if r["frames_per_s"] else "-"
        mem = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
        print(f"{r['stage']:<18} {r['seconds']:>8.1f} {fps:>10} {mem:>12}")
    print(f"{'total':<18} {summary['total_seconds']:>8.1f}")
    print("\noutputs:")
    for what, where in summary["outputs"].items():
        print(f"  {what:<16} {where}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (corpus size, seed, fine-tuning epochs, output folder)."""
    parser.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed (default: %(default)s)")
    parser.add_argument("--train", type=int, default=300, help="train videos (default: %(default)s)")
    parser.add_argument("--dev", type=int, default=60, help="dev videos (default: %(default)s)")
    parser.add_argument("--test", type=int, default=60, help="test videos (default: %(default)s)")
    parser.add_argument("--vocab", type=int, default=24, help="content glosses (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the preset's)")


def run(args: argparse.Namespace) -> int:
    """Run every stage, then print the table and write summary.json and report.png."""
    apply_thread_policy(None, workers=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    t0 = time.perf_counter()
    try:
        outputs = run_pipeline(out, args, stages)
    except SignstreamError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(out, outputs, stages, time.perf_counter() - t0)
    write_json(out / "summary.json", summary)
    write_report(summary, out / "report.png")
    print_table(summary)
    return 0


def summarise(out: Path, outputs: dict, stages: Stages, seconds: float) -> dict:
    """The figures of a finished run: WERs, learning curves, stage rows, outputs."""
    head, base = _json(out / "head" / "metrics.json"), _json(out / "head_random" / "metrics.json")
    finetune = _json(out / "finetune" / "metrics.json")
    return {
        "dev_wer": head["dev_wer"],
        "test_wer": head["test_wer"],
        "baseline_dev_wer": base["dev_wer"],
        "baseline_test_wer": base["test_wer"],
        "finetune_best_dev_wer": finetune["best_dev_wer"],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "curves": {"finetune": finetune["history"], "head": head["history"], "head_random": base["history"]},
        "stages": stages.rows,
        "total_seconds": round(seconds, 1),
        "outputs": {
            **outputs,
            "signjoey_files": str(Path(outputs["features"]) / "synth.s3d.{train,dev,test}"),
            "hypotheses": str(Path(outputs["head"]) / "test.hyp.txt"),
            "summary": str(out / "summary.json"),
            "report": str(out / "report.png"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signstream demo", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
