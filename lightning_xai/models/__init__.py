"""Model adapters: find layers and stages in timm, torchvision and Hugging Face models; logits from outputs."""

from .layers import Stage, layer_name, list_stages, resolve_layer
from .outputs import LogitsForward, check_logits, infer_num_prefix_tokens, logits_of, tokens_to_grid

__all__ = [
    "LogitsForward",
    "Stage",
    "check_logits",
    "infer_num_prefix_tokens",
    "layer_name",
    "list_stages",
    "logits_of",
    "resolve_layer",
    "tokens_to_grid",
]
