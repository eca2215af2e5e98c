import pytest
import torch
from torch import nn

from lightning_xai.models import build_model, list_stages, resolve_layer, small_cnn, small_resnet


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


def test_small_cnn_pooling_and_arguments():
    images = torch.zeros(2, 3, 32, 32)
    images[1, :, 8:10, 8:10] = 1.0  # one small bright patch
    for pool, kind in (("max", nn.AdaptiveMaxPool2d), ("avg", nn.AdaptiveAvgPool2d)):
        model = small_cnn(num_classes=3, width=4, pool=pool).eval()
        assert isinstance(model[8], kind) and isinstance(model[7], nn.ReLU)  # "7": the last conv's ReLU
        assert model(images).shape == (2, 3)
    # max pooling sees a small patch anywhere: a second copy elsewhere changes nothing
    model = small_cnn(width=4, pool="max").eval()
    features = model[:9]
    twice = images[1:].clone()
    twice[:, :, 20:22, 20:22] = 1.0  # out of reach of the first (receptive field 9 px), same stride phase
    with torch.no_grad():
        assert torch.allclose(features(images[1:]), features(twice))
    with pytest.raises(ValueError, match="pool"):
        small_cnn(pool="sum")
    with pytest.raises(ValueError, match="width"):
        small_cnn(width=0)


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
