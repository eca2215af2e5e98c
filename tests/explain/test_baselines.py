import pytest
import torch

from lightning_xai.explain import compose, constant_baseline, gaussian_blur, make_baseline, mean_baseline


def test_blur_preserves_constants_and_commutes_with_normalisation():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(gaussian_blur(torch.full_like(x, 0.3)), torch.full_like(x, 0.3), atol=1e-6)
    mean, std = (
        torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1),
        torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1),
    )
    assert torch.allclose(gaussian_blur((x - mean) / std), (gaussian_blur(x) - mean) / std, atol=1e-5)


def test_blur_smooths_and_clamps_kernel_for_small_images():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1.0
    blurred = gaussian_blur(x, kernel_size=51, sigma=2.0)  # kernel reduced to 17 for a 9-pixel image
    assert blurred.shape == x.shape
    assert 0 < float(blurred[..., 4, 4]) < 1 and float(blurred[..., 0, 0]) > 0
    assert blurred[..., 4, 4] == blurred.max()
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, sigma=0)
    with pytest.raises(ValueError, match="4-D"):
        gaussian_blur(torch.zeros(3, 8, 8))


def test_constant_and_mean_baselines():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(constant_baseline(x, 0.5), torch.full_like(x, 0.5))
    per_image = mean_baseline(x)
    assert torch.allclose(per_image[:, :, 0, 0], x.mean((2, 3)))
    dataset = mean_baseline(x, [0.1, 0.2, 0.3])
    assert torch.allclose(dataset[1, :, 2, 3], torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="one value per channel"):
        mean_baseline(x, [0.1, 0.2])


def test_make_baseline_specs():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(make_baseline(x, "blur", blur_kernel=5, blur_sigma=1.0), gaussian_blur(x, 5, 1.0))
    assert torch.equal(make_baseline(x, "zeros"), torch.zeros_like(x))
    assert torch.equal(make_baseline(x, 0.25), torch.full_like(x, 0.25))
    assert make_baseline(x, torch.zeros(3, 1, 1)).shape == x.shape
    assert torch.equal(make_baseline(x, lambda t: 1 - t), 1 - x)
    with pytest.raises(ValueError, match="'blur'"):
        make_baseline(x, "gray")
    with pytest.raises(ValueError, match="broadcast"):
        make_baseline(x, torch.zeros(5, 8, 8))
    with pytest.raises(ValueError, match="callable"):
        make_baseline(x, lambda t: t[:1])
    with pytest.raises(TypeError, match="`baseline`"):
        make_baseline(x, object())


def test_compose_keeps_and_replaces():
    x, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(compose(x, b, torch.ones(2, 1, 2, 2)), x)
    assert torch.allclose(compose(x, b, torch.zeros(2, 1, 2, 2)), b)
    # a low-resolution mask is upsampled bilinearly with align_corners=True: corners take the cell values
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2).expand(2, 1, 2, 2)
    out = compose(x, b, mask)
    assert torch.allclose(out[..., 0, 0], x[..., 0, 0]) and torch.allclose(out[..., -1, -1], b[..., -1, -1])
    # gradients reach the mask
    m = torch.full((2, 1, 2, 2), 0.5, requires_grad=True)
    compose(x, b, m).sum().backward()
    assert m.grad is not None
    with pytest.raises(ValueError, match="batch size"):
        compose(x, b, torch.ones(3, 1, 2, 2))
    with pytest.raises(ValueError, match="inputs' shape"):
        compose(x, b[:1], torch.ones(2, 1, 2, 2))
