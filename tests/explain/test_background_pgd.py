import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_xai.explain import background_pgd

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def data():
    gen = torch.Generator().manual_seed(1)
    pixels = torch.rand(4, 3, 16, 16, generator=gen)
    background = torch.ones(4, 1, 16, 16, dtype=torch.bool)
    background[..., 4:12, 4:12] = False
    return pixels, background, torch.tensor([0, 1, 2, 0])


def test_foreground_untouched_budget_range_and_loss_raised():
    model = small_cnn().train()
    pixels, background, labels = data()
    x = (pixels - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    x_adv = background_pgd(
        model, x, labels, background, normalization=(MEAN, STD), eps=8 / 255, step=2 / 255, steps=5
    )
    fg = (~background).expand_as(x)
    assert torch.equal(x_adv[fg], x[fg])
    adv_pixels = x_adv * STD.view(1, 3, 1, 1) + MEAN.view(1, 3, 1, 1)
    assert float((adv_pixels - pixels).abs().max()) <= 8 / 255 + 1e-5
    assert float(adv_pixels.min()) >= -1e-6 and float(adv_pixels.max()) <= 1 + 1e-6
    assert float((adv_pixels - pixels).abs().max()) > 1 / 255  # the attack did something
    model.eval()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), labels)
        attacked = F.cross_entropy(model(x_adv), labels)
    assert attacked >= clean
    model.train()
    assert model.training and model[1].training  # flags restored
    assert all(p.grad is None for p in model.parameters())  # parameters' grads untouched


def test_pixel_inputs_and_zero_budget():
    model = small_cnn()
    pixels, background, labels = data()
    out = background_pgd(model, pixels, labels, background, eps=0.0)
    assert torch.equal(out, pixels)
    out = background_pgd(
        model, pixels, labels, background[:, 0], random_start=True, generator=torch.Generator().manual_seed(0)
    )
    assert float((out - pixels).abs().max()) <= 8 / 255 + 1e-6


def test_bad_inputs():
    model = small_cnn()
    pixels, background, labels = data()
    with pytest.raises(ValueError, match=r"pass `normalization=\(mean, std\)`"):
        background_pgd(model, pixels * 3 - 1, labels, background)
    with pytest.raises(ValueError, match="both `mean` and `std`"):
        background_pgd(model, pixels, labels, background, mean=MEAN)
    with pytest.raises(ValueError, match="background_mask"):
        background_pgd(model, pixels, labels, background[:2])
    with pytest.raises(ValueError, match="`eps`"):
        background_pgd(model, pixels, labels, background, eps=-1.0)
    with pytest.raises(ValueError, match="`steps`"):
        background_pgd(model, pixels, labels, background, steps=-2)
    with pytest.raises(ValueError, match="`target` is required"):
        background_pgd(model, pixels, None, background)
    with pytest.raises(ValueError, match="below the number of classes"):
        background_pgd(model, pixels, 5, background)
    with pytest.raises(ValueError, match="`std` must be positive"):
        background_pgd(model, pixels, labels, background, normalization=(MEAN, torch.zeros(3)))
