"""MHEXAttribution: the Captum contract for image and token models."""

from __future__ import annotations

import pytest
import timm
import torch
from captum.metrics import sensitivity_max

from lightning_xai.attr.mhex import MHEXAttribution
from lightning_xai.heads import inject_mhex
from lightning_xai.models import LogitsForward


def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    handle = inject_mhex(model)
    with torch.no_grad():
        for p in handle.heads.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    return model


IMAGES = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_image_maps_follow_the_captum_contract():
    model = resnet()
    explainer = MHEXAttribution(model)
    maps = explainer.attribute(IMAGES, target=[0, 1, 2])
    assert maps.shape == (3, 1, 32, 32) and maps.dtype == IMAGES.dtype
    assert bool((maps >= 0).all()) and bool((maps <= 1).all())
    assert torch.equal(explainer.attribute(IMAGES, target=torch.tensor([0, 1, 2])), maps)
    (as_tuple,) = explainer.attribute((IMAGES,), target=[0, 1, 2])
    assert torch.equal(as_tuple, maps)
    expanded = explainer.attribute(IMAGES, target=[0, 1, 2], expand_to_input=True)
    assert expanded.shape == IMAGES.shape
    predicted = model(IMAGES).argmax(1)
    assert torch.equal(explainer.attribute(IMAGES), explainer.attribute(IMAGES, target=predicted))
    chunked = explainer.attribute(IMAGES, target=1, internal_batch_size=2)
    assert torch.allclose(chunked, explainer.attribute(IMAGES, target=1), atol=1e-6)
    assert not explainer.has_convergence_delta()


def test_layer_weights_and_wrapped_forward():
    model = resnet()
    handle_heads = model.mhex_heads
    uniform = MHEXAttribution(model).attribute(IMAGES, target=0)
    only_last = MHEXAttribution(model, layer_weights=[0, 0, 0, 1]).attribute(IMAGES, target=0)
    assert not torch.allclose(uniform, only_last)
    assert torch.allclose(only_last.flatten(1).amax(1), torch.ones(3), atol=1e-5)
    deep_damped = MHEXAttribution(model, layer_weights="inverse_depth").attribute(IMAGES, target=0)
    assert deep_damped.shape == uniform.shape
    wrapped = MHEXAttribution(lambda x: model(x), heads=handle_heads)
    assert torch.equal(wrapped.attribute(IMAGES, target=0), uniform)
    assert torch.equal(MHEXAttribution(LogitsForward(model)).attribute(IMAGES, target=0), uniform)


def test_model_state_is_untouched():
    model = resnet().train()
    flags = {n: m.training for n, m in model.named_modules()}
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}
    with pytest.warns(UserWarning, match="training mode"):
        MHEXAttribution(model).attribute(IMAGES[:2], target=0)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()} == hooks
    assert all(p.grad is None for p in model.parameters())
    assert not model.mhex_heads.capture


def test_vit_maps_at_input_resolution():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8, depth=2
    ).eval()
    inject_mhex(model)
    maps = MHEXAttribution(model).attribute(IMAGES, target=[3, 2, 1])
    assert maps.shape == (3, 1, 32, 32) and bool((maps >= 0).all()) and bool((maps <= 1).all())


def test_token_scores_are_zero_on_padding_and_special_tokens():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=16,
    )
    model = BertForSequenceClassification(config).eval()
    inject_mhex(model, special_token_ids=[0, 1, 2])
    ids = torch.randint(4, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[mask == 0] = 0
    ids[:, 0] = 1
    ids[0, 7], ids[1, 4] = 2, 2
    explainer = MHEXAttribution(model, token_smoothing_sigma=1.0)
    scores = explainer.attribute(ids, target=[0, 2], additional_forward_args=(mask,))
    assert scores.shape == (2, 8)
    special = (ids <= 2) | (mask == 0)
    assert torch.equal(scores[special], torch.zeros(int(special.sum())))
    assert bool((scores[~special] > 0).any()) and bool((scores <= 1 + 1e-6).all())
    extra = torch.zeros_like(ids)
    extra[:, 3] = 1  # also silence token 3 through an explicit mask
    masked = explainer.attribute(
        ids, target=[0, 2], additional_forward_args=(mask,), special_tokens_mask=extra
    )
    assert torch.equal(masked[:, 3], torch.zeros(2))
    with pytest.raises(TypeError, match="integer token ids"):
        explainer.attribute(ids.float(), additional_forward_args=(mask,))


def test_captum_metrics_accept_the_method():
    model = resnet()
    explainer = MHEXAttribution(model)
    score = sensitivity_max(explainer.attribute, IMAGES[:2], target=1, n_perturb_samples=2)
    assert score.shape == (2,) and bool(torch.isfinite(score).all())


def test_errors():
    plain = timm.create_model("resnet18", pretrained=False, num_classes=4)
    with pytest.raises(ValueError, match="inject_mhex"):
        MHEXAttribution(plain)
    explainer = MHEXAttribution(resnet())
    with pytest.raises(ValueError, match="target"):
        explainer.attribute(IMAGES, target=7)
    with pytest.raises(ValueError, match="one tensor"):
        explainer.attribute((IMAGES, IMAGES))
    with pytest.raises(ValueError, match="4-D"):
        explainer.attribute(IMAGES[0])
    with pytest.raises(ValueError, match="internal_batch_size"):
        explainer.attribute(IMAGES, internal_batch_size=0)
