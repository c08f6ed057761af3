"""Word (gloss) error rate: the ``signstream wer`` subcommand and its library.

Scoring follows the PHOENIX evaluation kit: both references and hypotheses
are cleaned (:mod:`signstream.tools.cleanup`), then the corpus WER is
``(S + D + I) / N`` summed over the whole split -- not a mean of per-sentence
rates. Alignment is Levenshtein on gloss tokens via ``jiwer``. The CTM/STM
writers produce files that NIST sclite (Debian package ``sctk``) scores the
same way, for cross-checks against the official tool.

This module must not import torch: ``signstream wer`` has to start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import jiwer

from signstream import SignstreamError
from signstream.loaders.fileio import atomic_write
from signstream.tools.cleanup import CLEANUPS, get_cleanup

HELP = "score gloss hypotheses against references (corpus WER, PHOENIX cleanup)"

# CTM tokens get synthetic, evenly spaced times inside one STM segment that
# spans the whole "recording": sclite only needs each word inside its segment.
_TOKEN_DUR = 0.01
_SEGMENT_END = 1.0e6


def read_gloss_file(path: str | os.PathLike) -> dict[str, str]:
    """Read ``name<TAB>glosses`` lines (one sentence per line).

    Blank lines are skipped; ``name<TAB>`` with nothing after the tab is an
    empty sentence. A UTF-8 byte-order mark at the start is ignored.

    Args:
        path: the text file.

    Returns:
        ``{name: gloss sentence}`` in file order.

    Raises:
        SignstreamError: missing or unreadable file, a line without a tab or
            with an empty name, or a duplicate name (the message gives
            ``file:line``).
    """
    try:
        # utf-8-sig: editors on Windows start files with a BOM, which is not part of the first name.
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise SignstreamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SignstreamError(f"{path}: is a directory, not a gloss file") from None
    except UnicodeDecodeError as exc:
        raise SignstreamError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise SignstreamError(f"{path}: cannot read ({exc.strerror})") from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, tab, glosses = line.partition("\t")
        name = name.strip()
        if not tab or not name:
            raise SignstreamError(
                f"{path}:{lineno}: expected 'name<TAB>glosses', got {line[:60]!r}"
            )
        if name in out:
            raise SignstreamError(f"{path}:{lineno}: duplicate sentence name {name!r}")
        out[name] = " ".join(glosses.split())
    return out


def _count_errors(pairs: list[tuple[list[str], list[str]]]) -> dict[str, int]:
    """Sum S/D/I/hits over (ref tokens, hyp tokens) pairs.

    Empty sides are counted here (all deletions / all insertions) because
    some jiwer versions reject empty strings; only pairs with both sides
    non-empty go to jiwer.
    """
    counts = {"sub": 0, "del": 0, "ins": 0, "hits": 0}
    both_refs, both_hyps = [], []
    for ref, hyp in pairs:
        if not hyp:
            counts["del"] += len(ref)
        elif not ref:
            counts["ins"] += len(hyp)
        else:
            both_refs.append(" ".join(ref))
            both_hyps.append(" ".join(hyp))
    if both_refs:
        out = jiwer.process_words(both_refs, both_hyps)
        counts["sub"] += out.substitutions
        counts["del"] += out.deletions
        counts["ins"] += out.insertions
        counts["hits"] += out.hits
    return counts


def wer_score(
    refs: Mapping[str, str],
    hyps: Mapping[str, str],
    cleanup: str = "phoenix2014",
) -> dict:
    """Corpus WER of ``hyps`` against ``refs`` after cleanup.

    Args:
        refs: ``{name: reference gloss sentence}``; defines the split.
        hyps: ``{name: hypothesis gloss sentence}``; a name missing here is
            scored as an empty hypothesis (all deletions).
        cleanup: ``phoenix2014`` | ``phoenix2014t`` | ``none``, applied to
            both sides.

    Returns:
        ``{"wer": percent, "sub", "del", "ins", "hits", "n" (reference
        tokens), "sentences", "missing" (refs with no hypothesis),
        "cleanup"}``.

    Raises:
        SignstreamError: a hypothesis name that is not a reference, no
            references, or no reference tokens left after cleanup.
    """
    clean = get_cleanup(cleanup)
    _check_no_extra(refs, hyps)
    if not refs:
        raise SignstreamError("no reference sentences to score")
    pairs = [(clean(ref).split(), clean(hyps.get(name, "")).split()) for name, ref in refs.items()]
    n = sum(len(ref) for ref, _ in pairs)
    if n == 0:
        raise SignstreamError("references hold no glosses after cleanup; WER is undefined")
    counts = _count_errors(pairs)
    errors = counts["sub"] + counts["del"] + counts["ins"]
    return {
        "wer": 100.0 * errors / n,
        **counts,
        "n": n,
        "sentences": len(refs),
        "missing": sum(1 for name in refs if name not in hyps),
        "cleanup": cleanup,
    }


def _check_no_extra(refs: Mapping[str, str], hyps: Mapping[str, str]) -> None:
    extra = [name for name in hyps if name not in refs]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise SignstreamError(f"hypothesis {extra[0]!r} has no reference{more}")


def _check_ctm_name(name: str) -> None:
    # sclite splits CTM/STM lines on whitespace; a name with spaces would shift fields.
    if not name or any(c.isspace() for c in name):
        raise SignstreamError(f"sentence name {name!r} cannot be written to CTM/STM (whitespace)")


def write_ctm(path: str | os.PathLike, hyps: Mapping[str, str]) -> None:
    """Write hypotheses as an sclite CTM file, atomically.

    One line per gloss: ``name 1 start duration GLOSS`` with synthetic,
    increasing times; sentences sorted by name. An empty hypothesis has no
    lines (sclite then counts its reference as deletions).

    Args:
        path: output ``.ctm``.
        hyps: ``{name: gloss sentence}`` (already cleaned if you want
            PHOENIX scoring).
    """
    with atomic_write(path, "w") as f:
        for name in sorted(hyps):
            _check_ctm_name(name)
            for i, tok in enumerate(hyps[name].split()):
                f.write(f"{name} 1 {i * _TOKEN_DUR:.3f} {_TOKEN_DUR:.3f} {tok}\n")


def write_stm(
    path: str | os.PathLike,
    refs: Mapping[str, str],
    speakers: Mapping[str, str] | None = None,
) -> None:
    """Write references as an sclite STM file, atomically.

    One segment per sentence: ``name 1 speaker 0.000 END GLOSSES`` where the
    segment spans every CTM time :func:`write_ctm` can produce.

    Args:
        path: output ``.stm``.
        refs: ``{name: gloss sentence}``.
        speakers: optional ``{name: signer}``; default ``unknown``.
    """
    speakers = speakers or {}
    with atomic_write(path, "w") as f:
        for name in sorted(refs):
            _check_ctm_name(name)
            speaker = "".join(speakers.get(name, "unknown").split()) or "unknown"
            text = " ".join(refs[name].split())
            line = f"{name} 1 {speaker} 0.000 {_SEGMENT_END:.3f} {text}"
            f.write(line.rstrip() + "\n")


def format_summary(score: Mapping) -> str:
    """One human line: ``WER 23.45% (S=.. D=.. I=.. N=..)``."""
    return (
        f"WER {score['wer']:.2f}% (S={score['sub']} D={score['del']} "
        f"I={score['ins']} N={score['n']})"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``signstream wer`` options."""
    parser.add_argument("--ref", required=True, help="references: name<TAB>glosses per line")
    parser.add_argument("--hyp", required=True, help="hypotheses: name<TAB>glosses per line")
    parser.add_argument(
        "--cleanup", default="phoenix2014", choices=sorted(CLEANUPS),
        help="gloss cleanup applied to both sides before scoring (default phoenix2014)",
    )
    parser.add_argument("--json", action="store_true", help="print the score as a JSON object")
    parser.add_argument("--ctm", help="also write the cleaned hypotheses as an sclite CTM file")
    parser.add_argument("--stm", help="also write the cleaned references as an sclite STM file")
    parser.add_argument(
        "--allow-missing", action="store_true",
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
        raise SignstreamError(f"{args.hyp}: no hypotheses (the file has no lines); every sentence "
                              "would score as deleted")
    _check_no_extra(refs, hyps)  # a hypothesis with no reference is the worse mistake: first
    missing = [name for name in refs if name not in hyps]
    if missing:
        what = (f"{len(missing)} of {len(refs)} reference sentences have no hypothesis in {args.hyp} "
                f"(first: {missing[0]!r})")
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
    clean = get_cleanup(args.cleanup)
    outputs = [("--ctm", args.ctm, write_ctm, {name: clean(hyps.get(name, "")) for name in refs}),
               ("--stm", args.stm, write_stm, {name: clean(ref) for name, ref in refs.items()})]
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
