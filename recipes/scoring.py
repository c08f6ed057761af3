"""Scoring: gloss cleanup, corpus WER, sclite CTM/STM files, gloss-file reading.

What the recipes report and ``signstream wer`` prints is computed here, once: both sides
are cleaned with a :data:`CLEANUPS` rule set (PHOENIX-2014 / 2014-T evaluation kit), then the
corpus WER is ``(S + D + I) / N`` over the whole split. Must not import torch
(``signstream wer`` starts fast). The rules and why: docs/design/scoring.md
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import jiwer

from signstream import SignstreamError, lookup
from signstream.loaders.fileio import atomic_write

# ------------------------------------------------------------------- cleanup
_PREFIXES = ("loc-", "cl-", "qu-", "poss-", "lh-")
_SPELLING = (("S0NNE", "SONNE"), ("HABEN2", "HABEN"))
_DROPPED_2014 = frozenset({"__EMOTION__", "__PU__", "__LEFTHAND__", "__EPENTHESIS__"})
_MARKER_2014T = re.compile(r"__[A-Z]+__")
_LETTER_UNIT = re.compile(r"[A-Z]|SCH|NN")
_RAUM = re.compile(r"([A-Z][A-Z])RAUM")


def strip_prefixes(tokens: list[str]) -> list[str]:
    """Remove the annotation prefixes ``loc- cl- qu- poss- lh-`` (rule 1)."""
    out = []
    for tok in tokens:
        for prefix in _PREFIXES:
            tok = tok.replace(prefix, "")
        out.append(tok)
    return [t for t in out if t]


def fix_spelling(tokens: list[str]) -> list[str]:
    """Apply ``S0NNE`` -> ``SONNE`` and ``HABEN2`` -> ``HABEN`` (rule 2)."""
    out = []
    for tok in tokens:
        for wrong, right in _SPELLING:
            tok = tok.replace(wrong, right)
        out.append(tok)
    return out


def drop_markers_2014(tokens: list[str]) -> list[str]:
    """Drop the PHOENIX-2014 non-sign markers; ``__ON__``/``__OFF__`` stay (rule 3)."""
    return [t for t in tokens if t not in _DROPPED_2014]


def drop_markers_2014t(tokens: list[str]) -> list[str]:
    """Drop every ``__X__`` token, as PHOENIX-2014-T scoring does (rule 3, 2014-T)."""
    return [t for t in tokens if not _MARKER_2014T.fullmatch(t)]


def join_wie_aussehen(tokens: list[str]) -> list[str]:
    """Turn the token pair ``WIE AUSSEHEN`` into ``WIE-AUSSEHEN`` (rule 4)."""
    out: list[str] = []
    for tok in tokens:
        if tok == "AUSSEHEN" and out and out[-1] == "WIE":
            out[-1] = "WIE-AUSSEHEN"
        else:
            out.append(tok)
    return out


def expand_zeigen(tokens: list[str]) -> list[str]:
    """Rewrite the bare token ``ZEIGEN`` as ``ZEIGEN-BILDSCHIRM`` (rule 5)."""
    return ["ZEIGEN-BILDSCHIRM" if t == "ZEIGEN" else t for t in tokens]


def join_letters(tokens: list[str]) -> list[str]:
    """Join runs of two or more fingerspelled letters with ``+`` (rule 6)."""
    out: list[str] = []
    run: list[str] = []
    for tok in [*tokens, None]:  # None flushes the last run
        if tok is not None and _LETTER_UNIT.fullmatch(tok):
            run.append(tok)
            continue
        if run:
            out.append("+".join(run))
            run = []
        if tok is not None:
            out.append(tok)
    return out


def drop_raum(tokens: list[str]) -> list[str]:
    """Drop ``RAUM`` when it follows two capitals (``XXRAUM`` -> ``XX``, rule 7)."""
    return [_RAUM.sub(r"\1", t) for t in tokens]


def drop_plusplus(tokens: list[str]) -> list[str]:
    """Drop the ``-PLUSPLUS`` suffix (rule 8)."""
    out = [t.replace("-PLUSPLUS", "") for t in tokens]
    return [t for t in out if t]


def merge_repeats(tokens: list[str]) -> list[str]:
    """Merge immediately repeated tokens: ``A A B A`` -> ``A B A`` (rule 9)."""
    out: list[str] = []
    for tok in tokens:
        if not out or out[-1] != tok:
            out.append(tok)
    return out


_STEPS_2014: tuple[Callable[[list[str]], list[str]], ...] = (
    strip_prefixes,
    fix_spelling,
    drop_markers_2014,
    join_wie_aussehen,
    expand_zeigen,
    join_letters,
    drop_raum,
    drop_plusplus,
    merge_repeats,
)
# 2014-T: same chain, but every __X__ marker goes at step 3 (before merging,
# so "A __OFF__ A" still merges to "A").
_STEPS_2014T = tuple(drop_markers_2014t if s is drop_markers_2014 else s for s in _STEPS_2014)


def _run(steps: tuple[Callable[[list[str]], list[str]], ...], sentence: str) -> str:
    tokens = sentence.split()
    for step in steps:
        tokens = step(tokens)
    return " ".join(tokens)


def clean_phoenix2014(sentence: str) -> str:
    """Apply the PHOENIX-2014 scoring cleanup to one gloss sentence.

    Args:
        sentence: whitespace-separated glosses.

    Returns:
        The cleaned sentence, tokens separated by single spaces ("" if none
        are left).
    """
    return _run(_STEPS_2014, sentence)


def clean_phoenix2014t(sentence: str) -> str:
    """Apply the PHOENIX-2014-T scoring cleanup (2014 rules + drop all ``__X__``).

    Args:
        sentence: whitespace-separated glosses.

    Returns:
        The cleaned sentence ("" if no tokens are left).
    """
    return _run(_STEPS_2014T, sentence)


def clean_none(sentence: str) -> str:
    """Only normalise whitespace; no gloss is changed."""
    return " ".join(sentence.split())


CLEANUPS: dict[str, Callable[[str], str]] = {
    "phoenix2014": clean_phoenix2014,
    "phoenix2014t": clean_phoenix2014t,
    "none": clean_none,
}


# ----------------------------------------------------------------------- WER
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
            raise SignstreamError(f"{path}:{lineno}: expected 'name<TAB>glosses', got {line[:60]!r}")
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
    clean = lookup(CLEANUPS, cleanup, "cleanup")
    check_no_extra(refs, hyps)
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


def check_no_extra(refs: Mapping[str, str], hyps: Mapping[str, str]) -> None:
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
