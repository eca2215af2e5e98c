"""MHEX gates and heads: identity at injection, removal, the equivalent-matrix invariant, gradients, tokens."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from lightning_xai.heads import AttentionGate, MHEXHead, find_mhex, inject_mhex

FULL = {"gate_rank": None, "refine": True}  # the spec's full C x C gate and refinement


def resnet(num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=num_classes)


def vit(depth: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8, depth=depth
    )


def bert(layers: int = 4, hidden: int = 16) -> torch.nn.Module:
    # imported here: the DDP test's worker processes import this module and need no transformers
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(config)


def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    ids[:, 0] = 1  # [CLS]
    ids[0, 9], ids[1, 5], ids[2, 3] = 2, 2, 2  # [SEP]
    return ids, mask


def randomize(heads, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in heads.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.2 + param)


def images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


# -- gate and head ------------------------------------------------------------------------------------------


def test_gate_is_exactly_one_at_init_and_sigmoid_without_calibration():
    pooled = torch.randn(5, 12) * 100
    for rank in (None, 3):
        assert torch.equal(AttentionGate(12, rank=rank)(pooled), torch.ones(5, 12))
    plain = AttentionGate(12, b0=6.0, calibration="none")(pooled)
    assert torch.allclose(plain, torch.full((5, 12), 1 / (1 + math.exp(-6.0))), atol=0, rtol=1e-6)


def test_equivalent_matrix_is_w2_w1():
    head = MHEXHead(6, 3)
    with torch.no_grad():
        head.refine.copy_(torch.randn(6, 6))
    assert torch.allclose(head.equivalent_matrix(), head.classifier.weight @ head.refine)
    flat = MHEXHead(6, 3, refine=False)
    assert flat.refine is None and torch.equal(flat.equivalent_matrix(), flat.classifier.weight)


# -- injection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "efficientnet_b0"])
def test_identity_at_injection_and_removal_for_timm_cnns(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    x = images()
    before = model(x)
    names = [n for n, _ in model.named_modules()]
    count = sum(p.numel() for p in model.parameters())
    keys = list(model.state_dict())
    handle = inject_mhex(model)
    info = model.feature_info[-4:]
    assert handle.stage_names == [d["module"] for d in info]
    # head input sizes are the stages' channels
    assert [b.head.channels for b in handle.heads.branches.values()] == [d["num_chs"] for d in info]
    assert torch.equal(model(x), before)
    assert all(z.shape == (2, 3) and z.dtype == torch.float32 for z in handle.head_logits.values())
    handle.remove()
    assert [n for n, _ in model.named_modules()] == names
    assert sum(p.numel() for p in model.parameters()) == count
    assert list(model.state_dict()) == keys
    assert torch.equal(model(x), before)
    assert find_mhex(model) is None


def test_identity_for_vit_and_bert_and_side_branch_always():
    x = images()
    model = vit().eval()
    before = model(x)
    handle = inject_mhex(model)
    assert handle.stage_names == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert torch.equal(model(x), before)
    handle.remove()

    encoder = bert().eval()
    ids, mask = token_batch()
    before = encoder(ids, attention_mask=mask).logits
    handle = inject_mhex(encoder)
    assert torch.equal(encoder(ids, attention_mask=mask).logits, before)
    handle.remove()
    assert torch.equal(encoder(ids, attention_mask=mask).logits, before)

    model = resnet().eval()
    before = model(x)
    handle = inject_mhex(model, gate_mode="side_branch")
    randomize(handle.heads)
    assert torch.equal(model(x), before)


def test_auto_stages_are_evenly_spaced_for_transformers():
    assert inject_mhex(vit(depth=12)).stage_names == [f"blocks.{i}" for i in (2, 5, 8, 11)]
    # 1-indexed layers 3, 6, 9, 12
    names = inject_mhex(bert(layers=12)).stage_names
    assert names == [f"bert.encoder.layer.{i}" for i in (2, 5, 8, 11)]


def test_stage_selection_by_index_and_name():
    handle = inject_mhex(resnet(), stages=["layer4", 2])
    assert handle.stage_names == ["layer2", "layer4"]
    with pytest.raises(ValueError, match="not a stage"):
        inject_mhex(resnet(), stages=["layer9"])
    with pytest.raises(ValueError, match="twice"):
        inject_mhex(resnet(), stages=[-1, "layer4"])


def test_default_parameter_budget_and_spec_full_budget():
    model = resnet()
    base = sum(p.numel() for p in model.parameters())
    handle = inject_mhex(model)
    added = sum(p.numel() for p in handle.heads.parameters())
    assert added / base < 0.05
    refined = [b.head.refine is not None for b in handle.heads.branches.values()]
    assert refined == [True, True, True, False]  # "auto": no W1 on the 512-channel stage
    handle.remove()
    full = inject_mhex(model, **FULL)
    channels = [64, 128, 256, 512]
    assert sum(p.numel() for p in full.heads.parameters()) == sum(2 * c * c + c + 4 * c + 4 for c in channels)


def test_errors_are_clear():
    model = resnet()
    inject_mhex(model)
    with pytest.raises(ValueError, match="already has MHEX heads"):
        inject_mhex(model)
    with pytest.raises(ValueError, match="num_classes"):
        inject_mhex(resnet(), num_classes=0)
    with pytest.raises(ValueError, match="cannot list the stages"):
        inject_mhex(torch.nn.Sequential(torch.nn.Linear(2, 2)), num_classes=2)
    with pytest.raises(ValueError, match="gate_mode"):
        inject_mhex(resnet(), gate_mode="after")
    with pytest.raises(ValueError, match="gate_rank"):
        inject_mhex(resnet(), gate_rank=0)
    with pytest.raises(ValueError, match="refine"):
        inject_mhex(resnet(), refine="sometimes")


# -- the equivalent-matrix invariant ----------------------------------------------------------------------


def _check_grid_invariant(handle, tol: float) -> None:
    for key, branch in handle.heads.branches.items():
        maps = handle.heads.captured[key]
        cam = branch.head.class_activation_map(maps)
        expected = cam.mean(dim=(2, 3)) + branch.head.classifier.bias
        logits = handle.heads.head_logits[key]
        assert torch.allclose(logits, expected, rtol=0, atol=tol * max(1.0, float(logits.abs().max())))
        w2 = branch.head.classifier.weight
        w_eq = w2 if branch.head.refine is None else w2 @ branch.head.refine
        assert torch.allclose(branch.head.equivalent_matrix(), w_eq)


@pytest.mark.parametrize("config", [{}, FULL])
def test_invariant_cnn(config):
    model = resnet().eval()
    handle = inject_mhex(model, **config)
    randomize(handle.heads)
    with handle.heads.capturing():
        model(images())
    _check_grid_invariant(handle, 1e-5)


def test_invariant_cnn_float64():
    model = resnet().double().eval()
    handle = inject_mhex(model, **FULL)
    randomize(handle.heads)
    assert all(p.dtype == torch.float64 for p in handle.heads.parameters())
    with handle.heads.capturing():
        model(images().double())
    _check_grid_invariant(handle, 1e-10)


def test_invariant_vit_excludes_prefix_tokens():
    model = vit().eval()
    handle = inject_mhex(model, **FULL)
    randomize(handle.heads)
    with handle.heads.capturing():
        model(images())
    assert handle.heads.captured["blocks_3"].shape == (2, 192, 4, 4)
    _check_grid_invariant(handle, 1e-5)


def test_invariant_bert_with_padding_and_padding_invariance():
    encoder = bert().eval()
    handle = inject_mhex(encoder, special_token_ids=[0, 1, 2])
    randomize(handle.heads)
    ids, mask = token_batch()
    with handle.heads.capturing():
        encoder(ids, attention_mask=mask)
    mu = mask.float()
    for key, branch in handle.heads.branches.items():
        cam = branch.head.class_activation_map(handle.heads.captured[key])  # (B, K, T)
        expected = (cam * mu[:, None]).sum(-1) / mu.sum(-1, keepdim=True) + branch.head.classifier.bias
        logits = handle.heads.head_logits[key]
        assert torch.allclose(logits, expected, rtol=0, atol=1e-5 * max(1.0, float(logits.abs().max())))
    target = torch.tensor([0, 1, 2])
    saliency = handle.saliency(target)
    assert saliency.shape == (3, 10)
    special = (ids <= 2) | (mask == 0)
    assert torch.equal(saliency[special], torch.zeros(int(special.sum())))
    assert bool((saliency >= 0).all()) and bool((saliency <= 1).all())

    heads_before = {k: v.clone() for k, v in handle.head_logits.items()}
    padded_ids = torch.cat([ids, torch.zeros(3, 4, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], 1)
    with handle.heads.capturing():
        encoder(padded_ids, attention_mask=padded_mask)
    for key, value in heads_before.items():
        assert torch.allclose(handle.head_logits[key], value, atol=1e-5)
    padded = handle.saliency(target)
    assert torch.allclose(padded[:, :10], saliency, atol=1e-5)
    assert torch.equal(padded[:, 10:], torch.zeros(3, 4))


# -- training signal --------------------------------------------------------------------------------------


def _ds_loss(model, handle, x, y, lam=0.3):
    logits = model(x)
    main = F.cross_entropy(logits, y)
    return main, main + lam * sum(F.cross_entropy(z, y) for z in handle.head_logits.values())


def test_gradients_reach_every_gate_and_head_and_early_stages():
    x, y = images(batch=4), torch.tensor([0, 1, 2, 3])
    model = resnet()
    handle = inject_mhex(model, **FULL)
    main, total = _ds_loss(model, handle, x, y)
    total.backward()
    for name, param in handle.heads.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    total_grad = model.conv1.weight.grad.clone()
    model.zero_grad()
    main, _ = _ds_loss(model, handle, x, y)
    main.backward()
    assert not torch.allclose(model.conv1.weight.grad, total_grad)  # deep supervision reaches the stem


def test_low_rank_gate_gets_gradient_on_u_first():
    x, y = images(batch=4), torch.tensor([0, 1, 2, 3])
    model = resnet()
    handle = inject_mhex(model, gate_rank=8)
    _, total = _ds_loss(model, handle, x, y)
    total.backward()
    for branch in handle.heads.branches.values():
        assert bool(branch.gate.up.grad.abs().sum() > 0)
        assert branch.gate.down.grad is not None  # in the graph (zero while U = 0), so DDP sees it used


def test_detach_heads_leaves_backbone_with_main_gradient_only():
    x, y = images(batch=4), torch.tensor([0, 1, 2, 3])
    model = resnet()
    handle = inject_mhex(model, detach_heads=True, gate_mode="side_branch")
    randomize(handle.heads)
    main, total = _ds_loss(model, handle, x, y)
    total.backward()
    from_total = [p.grad.clone() for n, p in model.named_parameters() if not n.startswith("mhex_heads")]
    assert all(
        bool(branch.head.classifier.weight.grad.abs().sum() > 0) for branch in handle.heads.branches.values()
    )
    model.zero_grad()
    main, _ = _ds_loss(model, handle, x, y)
    main.backward()
    from_main = [p.grad for n, p in model.named_parameters() if not n.startswith("mhex_heads")]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(from_total, from_main, strict=True))


def test_heads_run_in_float32_under_bf16_autocast():
    model = resnet()
    handle = inject_mhex(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images())
        loss = logits.float().sum() + sum(z.sum() for z in handle.head_logits.values())
    assert all(z.dtype == torch.float32 for z in handle.head_logits.values())
    loss.backward()
    assert all(p.grad is not None for p in handle.heads.parameters() if p is not None)


def test_saliency_single_head_shape_and_range_and_copy():
    model = resnet().eval()
    handle = inject_mhex(model, stages=[-1])
    randomize(handle.heads)
    with handle.heads.capturing():
        model(images())
    saliency = handle.saliency(torch.tensor([0, 3]), (32, 32))
    assert saliency.shape == (2, 1, 32, 32)
    assert bool((saliency >= 0).all())
    peaks = saliency.flatten(1).amax(1)
    assert torch.allclose(peaks[peaks > 0], torch.ones_like(peaks[peaks > 0]), atol=1e-6)
    clone = copy.deepcopy(model)
    assert find_mhex(clone) is not handle.heads
    assert torch.equal(clone(images()), model(images()))


def _ddp_step(rank: int, world_size: int) -> float:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    handle = inject_mhex(model)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    y = torch.tensor([rank, rank + 1])
    for _ in range(2):
        logits = ddp(x)
        loss = F.cross_entropy(logits, y) + 0.3 * sum(
            F.cross_entropy(z, y) for z in handle.head_logits.values()
        )
        loss.backward()
    return float(next(iter(handle.heads.parameters())).grad.abs().sum())


def test_two_process_ddp_has_no_unused_parameters(ddp):
    grads = ddp(_ddp_step)
    assert grads[0] == pytest.approx(grads[1])
