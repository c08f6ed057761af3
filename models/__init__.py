"""signstream.models: video backbones, weight loading and feature extraction.

Backbones are built by name (``create_model("i3d", weights=PATH)``); importing
this package registers every backbone file (:mod:`~signstream.models.i3d`,
:mod:`~signstream.models.s3d`, :mod:`~signstream.models.resnet2d`).
"""

from signstream.models import i3d, resnet2d, s3d  # noqa: F401  (registers the backbones)
from signstream.models.features import extract_features
from signstream.models.layers import VideoBackbone
from signstream.models.registry import (
    InputSpec,
    create_model,
    is_model,
    list_models,
    register_model,
)
from signstream.models.weights import load_pretrained, read_state_dict

__all__ = [
    "InputSpec",
    "VideoBackbone",
    "create_model",
    "extract_features",
    "is_model",
    "list_models",
    "load_pretrained",
    "read_state_dict",
    "register_model",
]
