"""What every benchmark writes, and the command line most of them share.

Each benchmark saves ``<name>.json`` (every figure, for tools) and
``<name>.md`` (its section of ``REPORT.md``) into one output folder, both
written atomically, so an interrupted run never leaves a report that looks
complete.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signstream.loaders.fileio import atomic_write, write_json


def save_report(
    out: str | os.PathLike, name: str, result: dict[str, Any], render: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Write ``result`` as ``out/<name>.json`` and its Markdown as ``out/<name>.md``; returns ``result``."""
    text = render(result)  # first: a report that cannot be rendered writes neither file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    with atomic_write(out / f"{name}.md", "w") as f:
        f.write(text)
    return result


def quick_cli(
    doc: str | None,
    run: Callable[..., dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
    quick_help: str = "a small, fast run (smoke test)",
) -> None:
    """``--out DIR [--quick]``: run the benchmark and print its Markdown."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    print(render(run(args.out, quick=args.quick)))
