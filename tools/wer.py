"""``signstream wer``: score a hypothesis file against a reference file.

A thin command over :mod:`signstream.recipes.scoring` (cleanup, corpus WER,
CTM/STM writing, gloss-file reading), which the recipes score with too. It
checks the inputs and output paths, scores, and prints one line or JSON.

This module must not import torch: ``signstream wer`` has to start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from signstream import SignstreamError, lookup
from signstream.recipes.scoring import (
    CLEANUPS,
    check_no_extra,
    read_gloss_file,
    wer_score,
    write_ctm,
    write_stm,
)

HELP = "score gloss hypotheses against references (corpus WER, PHOENIX cleanup)"


def format_summary(score: Mapping) -> str:
    """One human line: ``WER 23.45% (S=.. D=.. I=.. N=..)``."""
    return f"WER {score['wer']:.2f}% (S={score['sub']} D={score['del']} I={score['ins']} N={score['n']})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``signstream wer`` options."""
    parser.add_argument("--ref", required=True, help="references: name<TAB>glosses per line")
    parser.add_argument("--hyp", required=True, help="hypotheses: name<TAB>glosses per line")
    parser.add_argument(
        "--cleanup",
        default="phoenix2014",
        choices=sorted(CLEANUPS),
        help="gloss cleanup applied to both sides before scoring (default phoenix2014)",
    )
    parser.add_argument("--json", action="store_true", help="print the score as a JSON object")
    parser.add_argument("--ctm", help="also write the cleaned hypotheses as an sclite CTM file")
    parser.add_argument("--stm", help="also write the cleaned references as an sclite STM file")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score reference sentences that have no hypothesis as empty (all deletions) "
        "instead of refusing; a warning says how many",
    )


def check_output_path(path: str | os.PathLike, flag: str, inputs=()) -> None:
    """Refuse an output path that cannot be written, before anything is written.

    Raises:
        SignstreamError: the path is a directory or one of ``inputs``, or its
            nearest existing parent is not a writable directory.
    """
    p = Path(path)
    if p.is_dir():
        raise SignstreamError(f"{flag} {path}: is a directory")
    if p.exists() and any(p.resolve() == Path(i).resolve() for i in inputs):
        raise SignstreamError(f"{flag} {path}: would overwrite an input file")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SignstreamError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SignstreamError(f"{flag} {path}: {parent} is not writable")


def _read_inputs(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """Read ``--ref`` and ``--hyp``; refuse a file with no sentences and, unless
    ``--allow-missing``, a hypothesis file that leaves reference sentences out."""
    refs = read_gloss_file(args.ref)
    hyps = read_gloss_file(args.hyp)
    if not refs:
        raise SignstreamError(f"{args.ref}: no reference sentences (the file has no lines)")
    if not hyps:
        raise SignstreamError(
            f"{args.hyp}: no hypotheses (the file has no lines); every sentence would score as deleted"
        )
    check_no_extra(refs, hyps)  # a hypothesis with no reference is the worse mistake: first
    missing = [name for name in refs if name not in hyps]
    if missing:
        what = (
            f"{len(missing)} of {len(refs)} reference sentences have no hypothesis in {args.hyp} "
            f"(first: {missing[0]!r})"
        )
        if not args.allow_missing:
            raise SignstreamError(f"{what}; pass --allow-missing to score them as all deletions")
        print(f"signstream wer: warning: {what}; scored as all deletions", file=sys.stderr)
    return refs, hyps


def run(args: argparse.Namespace) -> int:
    """Score ``--hyp`` against ``--ref``; print one line (or JSON)."""
    for flag, path in (("--ctm", args.ctm), ("--stm", args.stm)):
        if path:
            check_output_path(path, flag, inputs=(args.ref, args.hyp))
    if args.ctm and args.stm and Path(args.ctm).absolute() == Path(args.stm).absolute():
        raise SignstreamError("--ctm and --stm name the same file")
    refs, hyps = _read_inputs(args)
    score = wer_score(refs, hyps, cleanup=args.cleanup)
    clean = lookup(CLEANUPS, args.cleanup, "cleanup")
    outputs = [
        ("--ctm", args.ctm, write_ctm, {name: clean(hyps.get(name, "")) for name in refs}),
        ("--stm", args.stm, write_stm, {name: clean(ref) for name, ref in refs.items()}),
    ]
    for flag, path, write, sentences in outputs:
        if path:
            try:
                write(path, sentences)
            except OSError as exc:  # a place the checks above cannot see into (e.g. /proc)
                raise SignstreamError(f"{flag} {path}: cannot write ({exc.strerror})") from None
    if args.json:
        print(json.dumps(score, sort_keys=True))
    else:
        print(format_summary(score))
    return 0
