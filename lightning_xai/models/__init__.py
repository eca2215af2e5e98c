"""Model adapters: find layers and stages in timm, torchvision and Hugging Face models; logits from outputs."""

from .layers import Stage, find_network, layer_name, list_stages, resolve_layer
from .outputs import (
    LogitsForward,
    check_logits,
    forward_module,
    infer_num_prefix_tokens,
    logits_of,
    tokens_to_grid,
)
from .safe_load import UnsafeCheckpointError, reserialise, safe_load
from .weights import PixelClassifier, imagenet_class_names, pretrained
from .zoo import build_model, small_cnn, small_resnet

__all__ = [
    "LogitsForward",
    "PixelClassifier",
    "Stage",
    "UnsafeCheckpointError",
    "build_model",
    "check_logits",
    "find_network",
    "forward_module",
    "imagenet_class_names",
    "infer_num_prefix_tokens",
    "layer_name",
    "list_stages",
    "logits_of",
    "pretrained",
    "reserialise",
    "resolve_layer",
    "safe_load",
    "small_cnn",
    "small_resnet",
    "tokens_to_grid",
]
