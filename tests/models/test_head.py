"""Recognition heads: exact output lengths, padding invariance, CTC training signal."""

import pytest
import torch

from signstream import SignstreamError
from signstream.models.decoding import greedy_decode
from signstream.models.head import HEADS, RecognitionHead, build_encoder, conv_out_length, ctc_loss

KINDS = sorted(HEADS)
IN_DIM, CLASSES = 8, 6


def _head(kind, **kw):
    torch.manual_seed(0)
    return RecognitionHead(IN_DIM, CLASSES, kind=kind, hidden=16, num_heads=2, dropout=0.0, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_output_lengths_equal_actual_tensor_length(kind):
    head = _head(kind).eval()
    with torch.no_grad():
        for t in range(1, 41):
            lp, out_len = head(torch.randn(1, t, IN_DIM), torch.tensor([t]))
            assert lp.shape[0] == int(out_len[0]) == int(head.output_lengths(torch.tensor([t]))[0])
            assert lp.shape[1:] == (1, CLASSES)


def test_conv_bilstm_downsamples_by_four_rounding_up():
    head = _head("conv_bilstm")
    lengths = torch.arange(1, 200)
    assert torch.equal(head.output_lengths(lengths), (lengths + 3) // 4)
    assert head.temporal_stride == 4


def test_conv_out_length_matches_torch_pooling_and_conv():
    for ceil_mode in (False, True):
        pool = torch.nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=ceil_mode)
        for t in range(1, 30):
            actual = pool(torch.zeros(1, 1, t)).shape[-1]
            assert int(conv_out_length(torch.tensor(t), 3, 2, 1, ceil_mode)) == actual


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_log_softmax_in_ctc_layout(kind):
    head = _head(kind).eval()
    lp, _ = head(torch.randn(2, 12, IN_DIM), torch.tensor([12, 7]))
    assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_frames_do_not_change_valid_outputs(kind):
    head = _head(kind).eval()
    torch.manual_seed(1)
    x = torch.randn(3, 21, IN_DIM)
    lengths = torch.tensor([21, 13, 5])
    noisy = x.clone()
    for b, n in enumerate(lengths.tolist()):
        noisy[b, n:] = torch.randn(21 - n, IN_DIM) * 100
    with torch.no_grad():
        lp_a, out_len = head(x, lengths)
        lp_b, _ = head(noisy, lengths)
    for b, n in enumerate(out_len.tolist()):
        assert torch.allclose(lp_a[:n, b], lp_b[:n, b], atol=1e-5), (kind, b)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_output_equals_unbatched_output(kind):
    head = _head(kind).eval()
    torch.manual_seed(2)
    x = torch.randn(2, 17, IN_DIM)
    lengths = torch.tensor([17, 9])
    with torch.no_grad():
        lp, out_len = head(x, lengths)
        alone, alone_len = head(x[1:, :9], torch.tensor([9]))
    assert int(alone_len[0]) == int(out_len[1])
    assert torch.allclose(lp[: out_len[1], 1], alone[:, 0], atol=1e-5)


def _toy_ctc_batch(n=8, t=24, seed=0):
    """Class c in 1..CLASSES-1 is a noisy one-hot pattern held for 4 frames, then 4 silent frames."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.eye(IN_DIM)[:CLASSES] * 3
    xs, targets = torch.zeros(n, t, IN_DIM), []
    for b in range(n):
        labels = torch.randint(1, CLASSES, (t // 8,), generator=g)
        for i, c in enumerate(labels.tolist()):
            xs[b, i * 8 : i * 8 + 4] = protos[c] + 0.3 * torch.randn(4, IN_DIM, generator=g)
        targets.append(labels)
    return xs, torch.full((n,), t), torch.stack(targets)


@pytest.mark.parametrize("kind", KINDS)
def test_few_optimisation_steps_lower_ctc_loss(kind):
    head = _head(kind).train()
    x, lengths, targets = _toy_ctc_batch()
    opt = torch.optim.Adam(head.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        lp, out_len = head(x, lengths)
        loss = ctc_loss(lp, targets, out_len, torch.full((len(targets),), targets.shape[1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_trained_linear_head_decodes_the_toy_targets():
    head = _head("linear").train()
    x, lengths, targets = _toy_ctc_batch(seed=3)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(400):  # CTC sits on an all-blank plateau for the first ~150 steps
        lp, out_len = head(x, lengths)
        loss = ctc_loss(lp, targets, out_len, torch.full((len(targets),), targets.shape[1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        lp, out_len = head(x, lengths)
    hits = sum(d == t.tolist() for d, t in zip(greedy_decode(lp, out_len), targets, strict=True))
    assert hits == len(targets)


def test_ctc_loss_is_zero_not_inf_for_impossible_alignment():
    lp = torch.randn(2, 1, CLASSES).log_softmax(-1).requires_grad_()
    loss = ctc_loss(lp, torch.tensor([[1, 2, 3]]), torch.tensor([2]), torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(lp.grad).all()


def test_ctc_loss_normalises_by_target_length():
    torch.manual_seed(0)
    lp = torch.randn(10, 1, CLASSES).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3]])
    summed = torch.nn.functional.ctc_loss(lp, targets, torch.tensor([10]), torch.tensor([3]), reduction="sum")
    ours = ctc_loss(lp, targets, torch.tensor([10]), torch.tensor([3]))
    assert torch.allclose(ours, summed / 3)


def test_unknown_kind_and_bad_lengths_raise():
    with pytest.raises(SignstreamError, match="unknown head 'gru'; choose from conv_bilstm, linear, transformer"):
        build_encoder("gru", IN_DIM, dropout=0.0)
    head = _head("linear")
    with pytest.raises(SignstreamError, match="lengths"):
        head(torch.randn(2, 5, IN_DIM), torch.tensor([5, 0]))
    with pytest.raises(SignstreamError, match="lengths"):
        head(torch.randn(2, 5, IN_DIM), torch.tensor([6, 5]))


def test_each_head_gets_only_the_options_its_class_takes():
    enc = build_encoder("transformer", IN_DIM, dropout=0.0, hidden=8, num_layers=1, num_heads=2)
    assert len(enc.encoder.layers) == 1 and enc.out_dim == 8
    assert build_encoder("conv_bilstm", IN_DIM, dropout=0.0, hidden=8, num_layers=3, num_heads=2).lstm.num_layers == 3
    assert build_encoder("linear", IN_DIM, dropout=0.0, hidden=8, num_layers=3, num_heads=2).out_dim == IN_DIM
    with pytest.raises(SignstreamError, match="num_heads=3"):
        build_encoder("transformer", IN_DIM, dropout=0.0, hidden=8, num_heads=3)
