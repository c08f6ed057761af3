"""Gloss vocabulary: class ids for CTC training and decoding, read from ``glosses.txt``.

Fixed layout so checkpoints and vocab files stay in sync: id 0 is the CTC blank, line ``i``
(0-based) is id ``i + 1``, ``<unk>`` is the last id; ``len(vocab) = len(glosses) + 2``. An
unknown gloss encodes to ``<unk>``, never dropped. Why: docs/design/models.md
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from signstream import SignstreamError
from signstream.loaders.fileio import atomic_write

BLANK = "<blank>"
UNK = "<unk>"


class Vocabulary:
    """Bidirectional gloss <-> class id map with blank 0 and a trailing ``<unk>``.

    Args:
        glosses: the glosses in id order (gloss ``glosses[i]`` gets id ``i + 1``).
        source: where they came from, used in error messages.

    Raises:
        SignstreamError: empty list, duplicates, whitespace inside a gloss, or
            a reserved name (``<blank>``/``<unk>``).
    """

    blank_id = 0

    def __init__(self, glosses: Sequence[str], source: str = "glosses") -> None:
        self.source = source
        self.glosses: list[str] = list(glosses)
        if not self.glosses:
            raise SignstreamError(f"{source}: vocabulary is empty")
        self._ids: dict[str, int] = {}
        for i, gloss in enumerate(self.glosses):
            where = f"{source}:{i + 1}"
            if not gloss or any(c.isspace() for c in gloss):
                raise SignstreamError(f"{where}: gloss {gloss!r} is empty or contains whitespace")
            if gloss in (BLANK, UNK):
                raise SignstreamError(f"{where}: {gloss!r} is reserved")
            if gloss in self._ids:
                raise SignstreamError(f"{where}: duplicate gloss {gloss!r}")
            self._ids[gloss] = i + 1
        self.unk_id = len(self.glosses) + 1

    @classmethod
    def from_glosses(cls, glosses: Iterable[str], source: str = "glosses") -> Vocabulary:
        """Build from glosses in id order (no sorting, duplicates rejected)."""
        return cls(list(glosses), source=source)

    @classmethod
    def from_sentences(cls, sentences: Iterable[str]) -> Vocabulary:
        """Build the sorted set of glosses seen in ``sentences`` (as the packer does)."""
        return cls(sorted({g for s in sentences for g in s.split()}), source="sentences")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Vocabulary:
        """Read ``glosses.txt``: one gloss per line; trailing blank lines are ignored.

        Raises:
            SignstreamError: missing or empty file, or a bad line (named as
                ``file:line``; a blank line in the middle would shift every
                later id, so it is an error too).
        """
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f.read().splitlines()]
        except FileNotFoundError:
            raise SignstreamError(f"{path}: vocabulary file not found") from None
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise SignstreamError(f"{path}: vocabulary file is empty")
        return cls(lines, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``glosses.txt`` atomically (blank and ``<unk>`` are implicit)."""
        with atomic_write(path, "w") as f:
            f.write("".join(f"{g}\n" for g in self.glosses))

    def __len__(self) -> int:
        """Number of classes: blank + glosses + ``<unk>``."""
        return len(self.glosses) + 2

    def __contains__(self, gloss: object) -> bool:
        return gloss in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.glosses == other.glosses

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.glosses)} glosses, {len(self)} classes)"

    def id(self, gloss: str) -> int:
        """Class id of one gloss (``unk_id`` if unknown)."""
        return self._ids.get(gloss, self.unk_id)

    def encode(self, gloss_string: str) -> list[int]:
        """Whitespace-separated glosses -> class ids; unknown glosses -> ``unk_id``."""
        return [self._ids.get(g, self.unk_id) for g in gloss_string.split()]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Class ids -> glosses; blanks are skipped, ``unk_id`` becomes ``<unk>``.

        Raises:
            SignstreamError: an id outside ``[0, len(self))`` (the model and
                the vocabulary file do not belong together).
        """
        out = []
        for i in ids:
            i = int(i)
            if i == self.blank_id:
                continue
            if i == self.unk_id:
                out.append(UNK)
            elif 0 < i <= len(self.glosses):
                out.append(self.glosses[i - 1])
            else:
                raise SignstreamError(f"{self.source}: class id {i} out of range for {len(self)} classes")
        return out

    def decode_string(self, ids: Iterable[int]) -> str:
        """Like :meth:`decode`, joined with single spaces."""
        return " ".join(self.decode(ids))
