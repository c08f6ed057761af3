"""``make demo``: the whole pipeline end to end on the built-in synthetic corpus.

Stages (each a real command a user would run on PHOENIX; the demo just chains
them at a small scale): synthesize a PHOENIX-2014 layout corpus, pack it into
VP9 shards, verify the shards. Later stages (fine-tuning, feature extraction,
head training) are appended as they exist. Prints a table of stage timings
and where every output is, and writes ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders.fileio import write_json


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux; children cover the packer's worker processes.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


class Stages:
    """Times stages and collects their figures for the final table."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn, *, frames_of=None):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        frames = frames_of(result) if frames_of else None
        self.rows.append({"stage": name, "seconds": round(seconds, 2), "frames": frames,
                          "frames_per_s": round(frames / seconds, 1) if frames else None,
                          "peak_rss_mb": round(_peak_rss_mb(), 1)})
        return result


def synthesize(out: Path, args) -> Path:
    from signstream.tools.synth import make_corpus

    return make_corpus(out / "corpus", layout="phoenix2014", seed=args.seed, train=args.train,
                       dev=args.dev, test=args.test, vocab=args.vocab, overwrite=True)


def pack(root: Path, out: Path) -> dict:
    from signstream.tools.pack import pack_corpus

    return pack_corpus("phoenix2014", out / "shards", root=root, progress=True)


def verify(out: Path) -> dict:
    from signstream.tools.verify import verify as verify_shards

    report = verify_shards(out / "shards", decode=True)
    if not report["ok"]:
        raise SignstreamError("verify found problems: " + "; ".join(report["problems"][:3]))
    return report


def print_table(stages: Stages, outputs: dict) -> None:
    print("\n=== summary ===")
    print(f"{'stage':<12} {'seconds':>8} {'frames/s':>10} {'peak RSS MB':>12}")
    for r in stages.rows:
        fps = f"{r['frames_per_s']:.0f}" if r["frames_per_s"] else "-"
        print(f"{r['stage']:<12} {r['seconds']:>8.1f} {fps:>10} {r['peak_rss_mb']:>12.0f}")
    print("\noutputs:")
    for what, where in outputs.items():
        print(f"  {what:<14} {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--dev", type=int, default=60)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--vocab", type=int, default=24)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    t0 = time.perf_counter()
    try:
        root = stages.run("synth", lambda: synthesize(out, args))
        packed = stages.run("pack", lambda: pack(root, out),
                            frames_of=lambda r: sum(m["totals"]["frames"] for m in r["splits"].values()))
        stages.run("verify", lambda: verify(out),
                   frames_of=lambda r: sum(s["frames"] for s in r["splits"].values()))
    except SignstreamError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    outputs = {"corpus": str(root), "shards": str(out / "shards"),
               "vocabulary": str(out / "shards" / "glosses.txt")}
    summary = {"stages": stages.rows, "outputs": outputs, "total_seconds": round(time.perf_counter() - t0, 1),
               "packed": {s: m["totals"] for s, m in packed["splits"].items()}}
    write_json(out / "summary.json", summary)
    print_table(stages, outputs)
    print(f"\nsummary: {out / 'summary.json'}  (total {summary['total_seconds']:.0f} s)")
    print(json.dumps({s: m["totals"]["samples"] for s, m in packed["splits"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
