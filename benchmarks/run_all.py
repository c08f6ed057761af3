"""``make bench``: run every benchmark and gather one report.

Each benchmark module exposes ``run(out, quick=False) -> dict`` and writes its
own JSON/Markdown (and plots) to ``out``; this driver runs them in turn and
concatenates their Markdown into ``out/REPORT.md``. A benchmark whose optional
part needs CUDA reports those rows as skipped rather than failing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from signstream.loaders.fileio import atomic_write, write_json

BENCHMARKS = ["pack", "loaders", "models", "pipeline", "remote", "threads"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
