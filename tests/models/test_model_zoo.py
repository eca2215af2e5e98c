import pytest
import torch
from torch import nn

from lightning_xai.models import build_model, list_stages, resolve_layer, small_resnet


def test_small_resnet_keeps_resolution_and_reports_true_strides():
    model = small_resnet(num_classes=3, width=8)
    stages = list_stages(model)
    assert [(s.name, s.channels, s.reduction) for s in stages[1:]] == [
        ("layer1", 8, 1),
        ("layer2", 16, 2),
        ("layer3", 32, 4),
        ("layer4", 64, 8),
    ]
    shapes = {}
    for stage in stages[1:]:
        stage.module.register_forward_hook(
            lambda m, i, o, name=stage.name: shapes.__setitem__(name, o.shape[-1])
        )
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert shapes == {"layer1": 32, "layer2": 16, "layer3": 8, "layer4": 4}
    assert resolve_layer(model) is model.layer4


def test_build_model():
    module = nn.Linear(2, 2)
    assert build_model(module, 2) is module
    assert build_model("small_resnet", 5)(torch.rand(1, 3, 16, 16)).shape == (1, 5)
    assert build_model("resnet18", 2).fc.out_features == 2
    with pytest.raises(ValueError, match="neither 'small_resnet' nor a timm model"):
        build_model("no_such_net", 2)
    with pytest.raises(TypeError, match="`model`"):
        build_model(3, 2)
    with pytest.raises(ValueError, match="`width`"):
        small_resnet(width=1)
