import itertools

import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn

from lightning_xai.models import (
    LogitsForward,
    layer_name,
    list_stages,
    logits_of,
    resolve_layer,
    tokens_to_grid,
)

TIMM_AUTO = {
    "resnet18": ("layer4", 512, 32),
    "convnext_atto": ("stages.3", 320, 32),
    "efficientnet_b0": ("blocks.6", 320, 32),
    "vit_tiny_patch16_224": ("blocks.11", 192, 16),
}


def tiny_hf(kind: str) -> nn.Module:
    common = dict(vocab_size=64, num_labels=3)
    if kind == "bert":
        config = transformers.BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **common
        )
    elif kind == "roberta":
        config = transformers.RobertaConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **common
        )
    else:
        config = transformers.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **common)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("name", sorted(TIMM_AUTO))
def test_timm_auto_layer_and_stages(name):
    model = timm.create_model(name, pretrained=False, num_classes=4)
    expected_name, channels, reduction = TIMM_AUTO[name]
    assert resolve_layer(model) is model.get_submodule(expected_name)
    stages = list_stages(model)
    assert (stages[-1].name, stages[-1].channels, stages[-1].reduction) == (
        expected_name,
        channels,
        reduction,
    )
    assert stages[-1].module is model.get_submodule(expected_name)
    # reductions never shrink from one stage to the next
    assert all(a.reduction <= b.reduction for a, b in itertools.pairwise(stages))


def test_timm_feature_info_index_and_dotted_name():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    assert resolve_layer(model, -1) is model.layer4
    assert resolve_layer(model, 1) is model.get_submodule(model.feature_info[1]["module"])
    assert resolve_layer(model, "layer3.1.conv2") is model.layer3[1].conv2
    assert resolve_layer(model, model.layer2) is model.layer2


def test_torchvision_resnet_stages_measured():
    model = torchvision.models.resnet18(num_classes=4)
    assert resolve_layer(model) is model.layer4
    stages = list_stages(model, image_size=64)
    assert [(s.name, s.channels, s.reduction) for s in stages] == [
        ("layer1", 64, 4),
        ("layer2", 128, 8),
        ("layer3", 256, 16),
        ("layer4", 512, 32),
    ]
    assert model.training  # the probe forward restored the flag


@pytest.mark.parametrize(
    ("kind", "blocks"),
    [
        ("bert", "bert.encoder.layer"),
        ("roberta", "roberta.encoder.layer"),
        ("distilbert", "distilbert.transformer.layer"),
    ],
)
def test_hf_encoders(kind, blocks):
    model = tiny_hf(kind)
    layer = resolve_layer(model)
    assert layer_name(model, layer) == f"{blocks}.1"
    stages = list_stages(model)
    assert [s.name for s in stages] == [f"{blocks}.0", f"{blocks}.1"]
    assert all(s.channels == 16 and s.reduction == 1 for s in stages)
    output = model(torch.randint(3, 64, (2, 5)))
    assert logits_of(output).shape == (2, 3)
    assert LogitsForward(model)(torch.randint(3, 64, (2, 5))).shape == (2, 3)


def test_wrapper_is_looked_through():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = timm.create_model("resnet18", pretrained=False, num_classes=4)

    wrapper = Wrapper()
    assert resolve_layer(wrapper) is wrapper.model.layer4
    assert list_stages(wrapper)[-1].name == "model.layer4"


def test_unknown_family_lists_layer_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"pass `layer=`.*layer names you could pass: 0, 3"):
        resolve_layer(model)
    with pytest.raises(ValueError, match="cannot list the stages"):
        list_stages(model)


def test_bad_layer_arguments():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    with pytest.raises(ValueError, match=r"'layer5' is not a submodule.*Did you mean: layer"):
        resolve_layer(model, "layer5")
    with pytest.raises(ValueError, match="out of range for 5"):
        resolve_layer(model, 7)
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(model, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="`layer` must be"):
        resolve_layer(model, 1.5)
    with pytest.raises(TypeError, match="`model` must be"):
        resolve_layer("resnet18")
    with pytest.raises(ValueError, match="needs a timm model"):
        resolve_layer(torchvision.models.resnet18(), 0)


def test_logits_of_variants():
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of((logits, None)) is logits
    assert logits_of({"logits": logits}) is logits
    with pytest.raises(TypeError, match="logits tensor"):
        logits_of("nope")


def test_tokens_to_grid_vit_tokens():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8
    )
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).view(2, 17, 3)
    grid = tokens_to_grid(tokens, model=model)
    assert grid.shape == (2, 3, 4, 4)
    # patch token k lands at row k // 4, column k % 4
    assert torch.equal(grid[1, :, 2, 1], tokens[1, 1 + 2 * 4 + 1])
    assert tokens_to_grid(torch.zeros(1, 12, 2), num_prefix_tokens=0, grid_size=(3, 4)).shape == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="does not match"):
        tokens_to_grid(torch.zeros(1, 12, 2), num_prefix_tokens=0, grid_size=(3, 3))
    with pytest.raises(ValueError, match="must be 3-D"):
        tokens_to_grid(torch.zeros(2, 3))
