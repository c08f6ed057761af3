"""End-to-end CTC model: a video backbone plus a gloss classifier head.

:class:`VideoCTC` is what ``recipes/finetune_ctc.py`` trains. Its checkpoint
file is a safetensors state dict (``backbone.*`` and ``head.*`` keys) whose
metadata records how to rebuild it (backbone name and options, head kind,
number of classes), so ``extract_features`` can restore the fine-tuned
backbone with :func:`load_backbone` — strictly, like every other checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from signstream import SignstreamError
from signstream.models.head import RecognitionHead
from signstream.models.registry import create_model
from signstream.models.weights import apply_state_dict

FORMAT = "signstream-videoctc/1"


class VideoCTC(nn.Module):
    """Backbone ``forward_features`` → :class:`RecognitionHead` → CTC log-probs.

    Args:
        backbone: a registered backbone (``forward_features``, ``out_frames``).
        num_classes: classes including blank and ``<unk>`` (``len(Vocabulary)``).
        head: head kind (``linear`` as in the seed, ``conv_bilstm``, ``transformer``).
        **head_kwargs: passed to :class:`RecognitionHead`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "linear", **head_kwargs):
        super().__init__()
        self.backbone = backbone
        self.head = RecognitionHead(backbone.num_features, num_classes, kind=head, **head_kwargs)

    def feature_lengths(self, lengths: torch.Tensor, padded_frames: int) -> torch.Tensor:
        """Backbone output steps that cover each video's true frames, on ``lengths``' device.

        Computed from host integers: CPU ``lengths`` (as the loaders deliver
        them) stay on the CPU and cost no host sync; the head moves them.
        """
        total = self.backbone.out_frames(padded_frames)
        steps = [min(total, max(1, self.backbone.out_frames(n))) for n in lengths.tolist()]
        return torch.tensor(steps, dtype=torch.int64, device=lengths.device)

    def forward(self, video: torch.Tensor, lengths: torch.Tensor):
        """``video [B, C, T, H, W]``, ``lengths [B]`` (best on the CPU) →
        ``(log_probs [T', B, C], out_lengths [B])`` on the video's device."""
        feats = self.backbone.forward_features(video)
        return self.head(feats, self.feature_lengths(lengths, video.shape[2]))


def checkpoint_metadata(
    backbone: str, backbone_kwargs: dict, head: str, head_kwargs: dict, num_classes: int, **extra
) -> dict[str, str]:
    """The safetensors metadata that lets :func:`load_backbone` rebuild the model."""
    return {
        "format": FORMAT,
        "backbone": backbone,
        "backbone_kwargs": json.dumps(backbone_kwargs),
        "head": head,
        "head_kwargs": json.dumps(head_kwargs),
        "num_classes": str(num_classes),
        **{k: str(v) for k, v in extra.items()},
    }


def save_checkpoint(model: VideoCTC, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write the model's weights and metadata as safetensors, atomically (fsynced, then renamed)."""
    from signstream.loaders.fileio import save_safetensors_atomic

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors_atomic(path, state, metadata=metadata)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a :class:`VideoCTC` checkpoint; a missing or foreign file is a one-line error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SignstreamError(f"checkpoint not found: {path} (a model.safetensors written by finetune_ctc)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") == FORMAT:
                state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a foreign file
        raise SignstreamError(
            f"{path} is not a safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "checkpoint= takes a model.safetensors written by finetune_ctc"
        ) from None
    if meta.get("format") != FORMAT:
        raise SignstreamError(
            f"{path} is not a finetune_ctc checkpoint (metadata format "
            f"{meta.get('format')!r}); pass backbone weights with weights= instead"
        )
    return state, meta


def load_backbone(path: str | os.PathLike, **overrides) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild the fine-tuned backbone of a checkpoint and load its weights strictly."""
    state, meta = read_checkpoint(path)
    kwargs = {**json.loads(meta["backbone_kwargs"]), **overrides}
    backbone = create_model(meta["backbone"], **kwargs)
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    # The keys are the model's own (saved from its state dict): no checkpoint_filter_fn.
    apply_state_dict(backbone, weights, path)
    return backbone, meta
