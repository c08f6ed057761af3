"""CTC decoders on hand-made log-probabilities: greedy, prefix beam search, registry."""

import itertools
import math
import time

import numpy as np
import pytest
import torch

from signstream import SignstreamError
from signstream.models.decoding import beam_decode, collapse, greedy_decode
from signstream.recipes.evaluation import decode_batch


def _lp(rows):
    """[T, C] probabilities -> [T, 1, C] log-probabilities."""
    return np.log(np.asarray(rows, dtype=np.float64))[:, None, :]


def _brute_force_best(probs, blank=0):
    """Most probable labelling by summing over every frame path (tiny T only)."""
    totals = {}
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        p = math.prod(probs[t, c] for t, c in enumerate(path))
        key = tuple(collapse(path, blank))
        totals[key] = totals.get(key, 0.0) + p
    return list(max(totals, key=totals.get))


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse([1, 1, 0, 1, 2, 2, 0, 0, 3]) == [1, 1, 2, 3]


def test_greedy_collapses_repeats_and_drops_blanks():
    rows = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]
    assert greedy_decode(_lp(rows)) == [[1, 2]]


def test_greedy_keeps_repeated_label_separated_by_blank():
    rows = [[0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]
    assert greedy_decode(_lp(rows)) == [[1, 1]]


def test_beam_keeps_repeated_label_separated_by_blank():
    rows = [[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]
    assert beam_decode(_lp(rows), beam_width=5) == [[1, 1]]


def test_beam_collapses_adjacent_repeats_without_blank():
    rows = [[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05]]
    assert beam_decode(_lp(rows), beam_width=5) == [[1]]


def test_beam_finds_labelling_greedy_misses():
    # Best path is blank-blank (0.36), but "1" gathers 0.24 + 0.24 + 0.16 = 0.64.
    rows = [[0.6, 0.4], [0.6, 0.4]]
    assert greedy_decode(_lp(rows)) == [[]]
    assert beam_decode(_lp(rows), beam_width=4) == [[1]]


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_matches_brute_force_on_tiny_random_inputs(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3) * 0.7, size=5)  # T=5, C=3
    got = beam_decode(np.log(probs)[:, None, :], beam_width=64, prune_topk=3)
    assert got == [_brute_force_best(probs)]


def test_lengths_limit_decoding_per_batch_element():
    rows = np.full((4, 2, 3), 0.05)
    rows[:, :, 0] = 0.9
    rows[0, :, :2] = [0.05, 0.9]  # class 1 at t=0 for both
    rows[3, :, ::2] = [0.05, 0.9]  # class 2 at t=3 for both, outside element 1's length
    lp = torch.from_numpy(np.log(rows / rows.sum(-1, keepdims=True)))
    lengths = torch.tensor([4, 2])
    for decode in (greedy_decode, beam_decode):
        assert decode(lp, lengths) == [[1, 2], [1]]


def test_beam_handles_phoenix_sized_input_quickly():
    torch.manual_seed(0)
    lp = (torch.randn(100, 2, 1000) * 3).log_softmax(-1)
    start = time.perf_counter()
    out = beam_decode(lp, beam_width=10)
    assert time.perf_counter() - start < 5.0
    assert len(out) == 2 and all(0 < len(seq) <= 100 for seq in out)


def test_beam_width_one_equals_greedy_on_peaked_input():
    torch.manual_seed(1)
    lp = (torch.randn(30, 3, 12) * 8).log_softmax(-1)
    assert beam_decode(lp, beam_width=1) == greedy_decode(lp)


def test_bad_shapes_and_names_raise():
    with pytest.raises(SignstreamError, match=r"\[T, B, C\]"):
        greedy_decode(np.zeros((3, 4)))
    with pytest.raises(SignstreamError, match="lengths"):
        greedy_decode(np.zeros((3, 1, 4)), [5])
    with pytest.raises(SignstreamError, match="greedy or beam"):
        decode_batch(torch.zeros(3, 1, 4), torch.tensor([3]), vocab=None, decoder="viterbi")
