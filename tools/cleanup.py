"""Gloss-sequence cleanup applied before scoring (PHOENIX-2014 / 2014-T rules).

The RWTH-PHOENIX-Weather evaluation kit rewrites every recognised sequence with
a chain of ``sed``/``perl`` substitutions before handing it to sclite, so that
annotation variants the corpus treats as equivalent are not counted as errors.
This module implements those rules on whitespace-separated gloss tokens and
exposes them as a dict of plain functions with a :func:`get_cleanup`
dispatcher (``phoenix2014``, ``phoenix2014t``, ``none``).

Order of operations (the order of the official script, one step per line):

1. drop the lowercase prefixes ``loc-``, ``cl-``, ``qu-``, ``poss-``, ``lh-``
   (removed wherever they occur in a token, in that order, like the script);
2. spelling fixes inside tokens: ``S0NNE`` -> ``SONNE``, ``HABEN2`` -> ``HABEN``;
3. drop the tokens ``__EMOTION__``, ``__PU__``, ``__LEFTHAND__``,
   ``__EPENTHESIS__`` (PHOENIX-2014-T: every ``__X__`` token, ``__ON__`` and
   ``__OFF__`` included); ``__ON__``/``__OFF__`` stay for PHOENIX-2014;
4. ``WIE AUSSEHEN`` (two adjacent tokens) -> ``WIE-AUSSEHEN``;
5. the bare token ``ZEIGEN`` -> ``ZEIGEN-BILDSCHIRM`` (``ZEIGEN-BILDSCHIRM``
   itself and longer tokens such as ``AUFZEIGEN`` are left alone);
6. runs of two or more fingerspelled letters are joined with ``+``
   (``A B C`` -> ``A+B+C``); a letter is a single ASCII capital, plus the
   German multi-letter units ``SCH`` and ``NN`` that the script also joins;
7. ``RAUM`` after two capitals is dropped (``XXRAUM`` -> ``XX``, e.g.
   ``NORDRAUM`` -> ``NORD``; a bare ``RAUM`` stays);
8. the suffix ``-PLUSPLUS`` is dropped;
9. immediately repeated tokens are merged (``A A B`` -> ``A B``).

Differences from the shell script, on purpose:

- The script runs on CTM lines (one token per line) and some of its regexes
  mis-handle sentence-level edge cases (``A B C D`` becomes ``A B+C+D``).
  We apply every rule to the token sequence as its comment intends.
- Step 3 happens before merging, so ``HAUS __PU__ HAUS`` becomes ``HAUS``
  (the Python ports in SLT/SignJoey agree; the perl merge would miss it).
- Step 9 merges any repeated token, not only pure ``[A-Z]+`` ones, as the
  Python ports do.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from signstream import SignstreamError

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


def get_cleanup(name: str) -> Callable[[str], str]:
    """Return the cleanup function registered under ``name``.

    Args:
        name: one of ``phoenix2014``, ``phoenix2014t``, ``none``.

    Raises:
        SignstreamError: for an unknown name (the message lists the choices).
    """
    try:
        return CLEANUPS[name]
    except KeyError:
        raise SignstreamError(
            f"unknown cleanup {name!r}; choose one of {', '.join(CLEANUPS)}"
        ) from None
