"""Scoring shared by the recipes: decode CTC outputs, compute WER, write the files.

Writes, per split, ``<split>.hyp.txt`` and ``<split>.ref.txt`` (``name<TAB>glosses``,
the input of ``signstream wer``), sclite ``<split>.ctm`` / ``<split>.stm`` of
the cleaned sentences, and returns the WER figures.
"""

from __future__ import annotations

from pathlib import Path

from signstream import SignstreamError, lookup
from signstream.loaders.fileio import atomic_write
from signstream.models.decoding import beam_decode, greedy_decode
from signstream.models.vocab import Vocabulary
from signstream.recipes.scoring import CLEANUPS, wer_score, write_ctm, write_stm


def decode_batch(log_probs, out_lengths, vocab: Vocabulary, decoder: str = "greedy", beam_width: int = 5) -> list[str]:
    """Decode ``[T', B, C]`` log-probs into gloss strings (``decoder``: ``greedy`` or ``beam``)."""
    log_probs, out_lengths = log_probs.detach().float().cpu(), out_lengths.cpu()
    if decoder == "beam":
        ids = beam_decode(log_probs, out_lengths, beam_width=beam_width)
    elif decoder == "greedy":
        ids = greedy_decode(log_probs, out_lengths)
    else:
        raise SignstreamError(f"unknown decoder {decoder!r}; choose greedy or beam")
    return [vocab.decode_string(seq) for seq in ids]


def write_gloss_file(path: Path, sentences: dict[str, str]) -> None:
    """``name<TAB>glosses`` lines sorted by name, atomically."""
    with atomic_write(path, "w") as f:
        for name in sorted(sentences):
            f.write(f"{name}\t{sentences[name]}\n")


def score_split(
    out: Path,
    split: str,
    refs: dict[str, str],
    hyps: dict[str, str],
    cleanup: str,
    signers: dict[str, str] | None = None,
) -> dict:
    """Score one split and write its hypothesis, reference, CTM and STM files."""
    score = wer_score(refs, hyps, cleanup=cleanup)
    clean = lookup(CLEANUPS, cleanup, "cleanup")
    write_gloss_file(out / f"{split}.hyp.txt", hyps)
    write_gloss_file(out / f"{split}.ref.txt", refs)
    write_ctm(out / f"{split}.ctm", {k: clean(v) for k, v in hyps.items()})
    write_stm(out / f"{split}.stm", {k: clean(v) for k, v in refs.items()}, signers)
    return score
