"""What MHEX reads from the model it is injected into: the number of classes and the special token ids."""

from __future__ import annotations

from torch import nn

from ...models.layers import _is_hf, _is_torchvision_resnet, _unwrap

_SPECIAL_TOKEN_ATTRS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "cls_token_id",
    "sep_token_id",
    "mask_token_id",
)


def infer_num_classes(model: nn.Module) -> int | None:
    """Number of classes of a timm, torchvision or Hugging Face classifier (None when unknown)."""
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if config is not None and isinstance(getattr(config, "num_labels", None), int) and _is_hf(inner):
        return int(config.num_labels)
    count = getattr(inner, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    if _is_torchvision_resnet(inner) and isinstance(getattr(inner, "fc", None), nn.Linear):
        return inner.fc.out_features
    get_classifier = getattr(inner, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, nn.Linear):
            return classifier.out_features
    return None


def _special_ids_from_config(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    ids = set()
    for name in _SPECIAL_TOKEN_ATTRS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            ids.add(value)
    return tuple(sorted(ids))
