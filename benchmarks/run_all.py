"""``make bench``: run every benchmark and gather one report.

Each benchmark module exposes ``run(out, quick=False) -> dict`` and writes its
own JSON/Markdown (and plots) to ``out``; this driver runs them in turn and
concatenates their Markdown into ``out/REPORT.md``, then appends the headline
figures of each benchmark that ran to the history (``benchmarks/history.py``).
A benchmark whose optional part needs CUDA reports those rows as skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from signstream.benchmarks import history
from signstream.loaders.fileio import atomic_write, write_json

BENCHMARKS = ["pack", "loaders", "models", "pipeline", "remote", "threads"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    parser.add_argument("--history", help="history file to append to (default: history.jsonl beside OUT)")
    parser.add_argument("--no-history", action="store_true", help="do not append this run to the history")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = args.only.split(",") if args.only else BENCHMARKS
    status, failed = {}, False
    for name in names:
        print(f"=== benchmark: {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"signstream.benchmarks.{name}")
            module.run(out, quick=args.quick)
            status[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception:  # report and go on: one broken benchmark must not hide the others
            traceback.print_exc()
            status[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 1)}
            failed = True
    write_json(out / "status.json", status)
    # The report gathers every benchmark whose results are present, not only this run's.
    parts = [p.read_text() for n in BENCHMARKS if (p := out / f"{n}.md").exists()]
    with atomic_write(out / "REPORT.md", "w") as f:
        f.write("# signstream benchmarks\n\n" + "\n".join(parts))
    print(f"report: {out / 'REPORT.md'}")
    if not args.no_history:
        path = Path(args.history) if args.history else out.parent / "history.jsonl"
        ran = [n for n in names if status[n]["ok"]]
        print(f"history: {history.record(out, ran, path, quick=args.quick)} benchmark(s) appended to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
