"""Recognition heads: frame features ``[B, T, D]`` -> CTC log-probabilities ``[T', B, C]``.

Sequence encoders registered by name in :data:`HEADS` (``conv_bilstm``, ``transformer``,
``linear``), wrapped by :class:`RecognitionHead`. Invariant: output lengths are exact, padded
frames (``>= lengths[b]``) never change valid outputs in eval mode, and blank is class 0.
Why: docs/design/models.md
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from signstream import SignstreamError, lookup


def _length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size]`` bool mask, True at valid positions."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def conv_out_length(
    length: torch.Tensor, kernel: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False
) -> torch.Tensor:
    """Output length of a 1-D conv/pool (dilation 1), as PyTorch computes it.

    ``floor_or_ceil((L + 2p - k) / s) + 1``; with ``ceil_mode`` the last
    window must still start inside the (left-padded) input, as in PyTorch.
    """
    span = length + 2 * padding - kernel
    if not ceil_mode:
        return torch.div(span, stride, rounding_mode="floor") + 1
    out = -torch.div(-span, stride, rounding_mode="floor") + 1
    # PyTorch drops a last window that would start in the right padding.
    return torch.where((out - 1) * stride >= length + padding, out - 1, out)


class ConvBiLSTMEncoder(nn.Module):
    """Temporal conv (K5-P2-K5-P2, stride 4) + 2-layer BiLSTM.

    The convolutions use ``padding=2`` ("same") and the pools ``ceil_mode``,
    so ``T' = ceil(ceil(T / 2) / 2)`` and never 0 for ``T >= 1`` (VAC uses no
    padding, losing 12 frames and failing on clips shorter than 16). Padded
    frames are zeroed before each conv and after each ReLU, so a valid
    output sees exactly the zero padding a lone sequence would see; a pool
    window that straddles the end takes max(x >= 0, 0) = x.
    BatchNorm statistics in train mode do include the zeroed padding.
    """

    temporal_stride = 4

    def __init__(self, in_dim: int, hidden: int, dropout: float, num_layers: int = 2) -> None:
        super().__init__()
        if hidden % 2:
            raise SignstreamError(f"conv_bilstm head: hidden={hidden} must be even (two directions)")
        self.conv1 = nn.Conv1d(in_dim, hidden, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.pool = nn.MaxPool1d(kernel_size=2, ceil_mode=True)
        self.lstm = nn.LSTM(
            hidden,
            hidden // 2,
            num_layers=num_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dim = hidden

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Exact output lengths: conv k5 p2 keeps L, each pool gives ceil(L/2)."""
        for _ in range(2):
            lengths = conv_out_length(lengths, kernel=5, padding=2)
            lengths = conv_out_length(lengths, kernel=2, stride=2, ceil_mode=True)
        return lengths

    def _block(self, x, lengths, conv, bn):
        x = x * _length_mask(lengths, x.shape[-1])[:, None, :]
        x = F.relu(bn(conv(x)))
        x = x * _length_mask(lengths, x.shape[-1])[:, None, :]
        return self.pool(x), conv_out_length(lengths, 2, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, D]``, ``[B]`` -> ``[B, T', hidden]``, ``[B]``."""
        y = x.transpose(1, 2)
        y, lens = self._block(y, lengths, self.conv1, self.bn1)
        y, lens = self._block(y, lens, self.conv2, self.bn2)
        y = y.transpose(1, 2)
        packed = nn.utils.rnn.pack_padded_sequence(y, lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=y.shape[1])
        return out, lens


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """``[length, dim]`` sine/cosine position table (Vaswani et al. 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class TransformerEncoderBody(nn.Module):
    """Linear projection + sinusoidal positions + masked TransformerEncoder."""

    temporal_stride = 1

    def __init__(self, in_dim: int, hidden: int, dropout: float, num_layers: int = 2, num_heads: int = 8) -> None:
        super().__init__()
        if hidden % num_heads:
            raise SignstreamError(f"transformer head: hidden={hidden} is not divisible by num_heads={num_heads}")
        self.proj = nn.Linear(in_dim, hidden)
        self.scale = math.sqrt(hidden)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden,
            num_heads,
            dim_feedforward=4 * hidden,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor=False: with norm_first the fast path is not used
        # anyway, and this silences the warning that says so.
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)
        self.out_dim = hidden

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """No downsampling: output lengths equal input lengths."""
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, D]``, ``[B]`` -> ``[B, T, hidden]``, ``[B]``."""
        valid = _length_mask(lengths, x.shape[1])
        y = self.proj(x) * self.scale + sinusoidal_positions(x.shape[1], self.proj.out_features, x.device)
        y = self.encoder(self.drop(y), src_key_padding_mask=~valid)
        return y * valid[..., None], lengths


class LinearEncoder(nn.Module):
    """Dropout only: the classifier reads the backbone features directly."""

    temporal_stride = 1

    def __init__(self, in_dim: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out_dim = in_dim

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output lengths equal input lengths."""
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, D]`` -> ``[B, T, D]`` (dropout in training)."""
        return self.drop(x), lengths


# The heads users pick by name (and may extend): encoder classes built as
# ``cls(in_dim, dropout=..., **options)`` with only the options their ``__init__`` declares.
HEADS: dict[str, type[nn.Module]] = {
    "conv_bilstm": ConvBiLSTMEncoder,
    "transformer": TransformerEncoderBody,
    "linear": LinearEncoder,
}


def build_encoder(kind: str, in_dim: int, *, dropout: float, **options) -> nn.Module:
    """Build the ``HEADS[kind]`` encoder, passing it the ``options`` it takes.

    Raises:
        SignstreamError: unknown kind (the message lists the choices).
    """
    cls = lookup(HEADS, kind, "head")
    takes = inspect.signature(cls).parameters
    return cls(in_dim, dropout=dropout, **{k: v for k, v in options.items() if k in takes})


class RecognitionHead(nn.Module):
    """Sequence encoder + linear classifier producing CTC log-probabilities.

    Args:
        in_dim: feature size ``D`` of the input ``[B, T, D]``.
        num_classes: output classes *including* the blank (id 0), i.e.
            ``len(Vocabulary)``.
        kind: ``conv_bilstm`` | ``transformer`` | ``linear``.
        hidden: encoder width (BiLSTM: both directions together).
        dropout: dropout inside the encoder and before the classifier.
        num_layers: BiLSTM / transformer layers.
        num_heads: attention heads (transformer only).

    An encoder gets only the options its class takes (``linear`` takes none of
    ``hidden``, ``num_layers``, ``num_heads``).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        kind: str = "conv_bilstm",
        hidden: int = 512,
        dropout: float = 0.1,
        num_layers: int = 2,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise SignstreamError(f"head needs >= 2 classes (blank + glosses), got {num_classes}")
        self.kind = kind
        self.encoder = build_encoder(
            kind, in_dim, hidden=hidden, dropout=dropout, num_layers=num_layers, num_heads=num_heads
        )
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.encoder.out_dim, num_classes)
        self.num_classes = num_classes
        self.temporal_stride = self.encoder.temporal_stride

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output lengths for input lengths ``[B]`` (exact, no forward pass)."""
        return self.encoder.output_lengths(lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a padded batch.

        Args:
            features: ``[B, T, D]`` float, padded after each sequence's end.
            lengths: ``[B]`` int, valid frames per sequence (1..T); best on the
                CPU (as the loaders deliver them): then checking them costs no
                host sync and they reach the GPU by a non-blocking copy.

        Returns:
            ``(log_probs [T', B, C], out_lengths [B])``: log-softmax over the
            classes, time-major as ``ctc_loss`` expects; ``out_lengths`` on
            the same device as ``features``.
        """
        if features.dim() != 3:
            raise SignstreamError(f"head expects features [B, T, D], got shape {tuple(features.shape)}")
        host = lengths.cpu()  # checked on the host: no copy (and no sync) for CPU lengths
        if host.numel() != features.shape[0] or not (1 <= int(host.min()) and int(host.max()) <= features.shape[1]):
            raise SignstreamError(
                f"head: lengths must be {features.shape[0]} values in [1, {features.shape[1]}], got {host.tolist()}"
            )
        if lengths.device.type == "cpu" and features.device.type == "cuda":
            lengths = lengths.pin_memory()  # from pageable memory the driver may wait for the stream
        lengths = lengths.to(device=features.device, dtype=torch.long, non_blocking=True)
        y, out_lengths = self.encoder(features, lengths)
        logits = self.classifier(self.drop(y))
        return logits.log_softmax(-1).transpose(0, 1), out_lengths


def ctc_loss(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    out_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
) -> torch.Tensor:
    """CTC loss with blank 0, per-target-length normalisation, batch mean.

    Each sequence's negative log-likelihood is divided by its target length,
    then averaged over the batch (``reduction="mean"``), so long sentences do
    not dominate. ``zero_infinity=True`` turns impossible alignments (output
    shorter than the target plus its needed blanks) into zero loss and zero
    gradient instead of ``inf``/NaN that would poison the whole batch.

    Args:
        log_probs: ``[T', B, C]`` log-softmax output of :class:`RecognitionHead`.
        targets: ``[B, S]`` padded or ``[sum(target_lengths)]`` concatenated ids
            (no blanks).
        out_lengths: ``[B]`` from the head.
        target_lengths: ``[B]``.

    Returns:
        A scalar tensor.
    """
    return F.ctc_loss(
        log_probs.float(),
        targets,
        out_lengths,
        target_lengths,
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )
