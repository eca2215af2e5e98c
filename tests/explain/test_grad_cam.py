import warnings

import pytest
import timm
import torch
import transformers
from captum.attr import LayerGradCam
from torch import nn

from lightning_xai.explain import grad_cam
from lightning_xai.models import LogitsForward


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=4).eval()


def test_equals_captum_layer_grad_cam(resnet):
    x = torch.rand(4, 3, 64, 64)
    target = torch.tensor([0, 1, 2, 3])
    ours = grad_cam(resnet, x, target, "layer3")
    captum = LayerGradCam(resnet, resnet.layer3).attribute(x, target=target, relu_attributions=True)
    assert ours.shape == captum.shape == (4, 1, 4, 4)
    assert torch.allclose(ours, captum.detach(), atol=1e-5)
    # per-sample targets: each row equals the single-sample call
    single = torch.cat([grad_cam(resnet, x[i : i + 1], int(target[i]), "layer3") for i in range(4)])
    assert torch.allclose(ours, single, atol=1e-5)


def test_upsample_normalize_and_default_target(resnet):
    x = torch.rand(2, 3, 64, 64)
    cam = grad_cam(resnet, x, None, upsample=True, normalize=True)
    assert cam.shape == (2, 1, 64, 64)
    assert float(cam.min()) >= 0 and float(cam.amax(dim=(1, 2, 3)).max()) <= 1
    predicted = resnet(x).argmax(1)
    assert torch.allclose(grad_cam(resnet, x, None), grad_cam(resnet, x, predicted))
    assert grad_cam(resnet, x, 1, upsample=(16, 8)).shape == (2, 1, 16, 8)
    signed = grad_cam(resnet, x, 1, relu=False)
    assert torch.allclose(signed.clamp_min(0), grad_cam(resnet, x, 1))


def test_create_graph_is_differentiable_wrt_parameters(resnet):
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    x = torch.rand(2, 3, 32, 32)
    cam = grad_cam(model, x, [0, 1], create_graph=True)
    assert cam.requires_grad
    cam.sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert not grad_cam(model, x, [0, 1]).requires_grad


def test_frozen_model_and_plain_callable():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval().requires_grad_(False)
    x = torch.rand(2, 3, 32, 32)
    cam = grad_cam(model, x, [0, 1])
    assert cam.shape == (2, 1, 1, 1)
    assert all(not p.requires_grad for p in model.parameters())
    wrapped = LogitsForward(model)
    assert torch.allclose(grad_cam(wrapped, x, [0, 1], "layer4"), cam)
    with pytest.raises(TypeError, match="`layer` must be a module"):
        grad_cam(lambda t: model(t), x, 0, "layer4")
    assert torch.allclose(grad_cam(lambda t: model(t), x, [0, 1], model.layer4), cam)


def test_vit_tokens_become_a_grid():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8
    )
    cam = grad_cam(model.eval(), torch.rand(2, 3, 32, 32), [0, 2])
    assert cam.shape == (2, 1, 4, 4)


def test_hf_token_scores():
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(3, 50, (3, 7))
    attention = torch.ones_like(ids)
    scores = grad_cam(model, ids, [0, 1, 0], additional_forward_args=(attention,))
    assert scores.shape == (3, 7)
    assert bool((scores >= 0).all())


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)
        self.explode = False

    def forward(self, x):
        features = self.conv(x)
        if self.explode:
            raise RuntimeError("boom")
        return self.head(features.mean((2, 3)))


def test_model_state_restored_also_on_exception():
    model = Exploding().train()
    model.head.weight.requires_grad_(False)
    x = torch.rand(2, 3, 8, 8)
    grad_cam(model, x, 0, "conv")
    model.explode = True
    with pytest.raises(RuntimeError, match="boom"):
        grad_cam(model, x, 0, "conv")
    assert model.training and model.conv.training
    assert not model.head.weight.requires_grad and model.conv.weight.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_inference_mode_error_names_the_fix(resnet):
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        grad_cam(resnet, torch.rand(1, 3, 32, 32), 0)


def test_bad_inputs(resnet):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="NaN"):
        grad_cam(resnet, x.clone().fill_(float("nan")), 0)
    with pytest.raises(ValueError, match="below the number of classes"):
        grad_cam(resnet, x, 4)
    with pytest.raises(ValueError, match="non-negative"):
        grad_cam(resnet, x, -1)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        grad_cam(resnet, x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer tensor"):
        grad_cam(resnet, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="2 ints"):
        grad_cam(resnet, x, [0])
    with pytest.raises(ValueError, match="is not a submodule"):
        grad_cam(resnet, x, 0, "layer9")
    with pytest.raises(ValueError, match="same device"):
        grad_cam(resnet, x.to("meta"), 0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        grad_cam(resnet, x.numpy(), 0)
    with pytest.raises(ValueError, match=r"\(B, K\) with B=2"):
        grad_cam(lambda t: resnet(t)[:, 0], x, 0, resnet.layer4)


def test_create_graph_keeps_training_statistics_and_a_plain_call_restores_them():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).train()
    x = torch.rand(2, 3, 32, 32)
    before = model.bn1.running_mean.clone()
    grad_cam(model, x, [0, 1])
    assert torch.equal(model.bn1.running_mean, before)
    cam = grad_cam(model, x, [0, 1], create_graph=True)  # part of a training step
    cam.sum().backward()
    assert not torch.equal(model.bn1.running_mean, before)


def test_a_model_in_training_mode_gets_a_warning_unless_the_call_is_training():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).train()
    x = torch.rand(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="grad_cam: the model is in training mode"):
        grad_cam(model, x, [0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grad_cam(model, x, [0, 1], create_graph=True)
