from __future__ import annotations

import math

import piq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from lightning_xai.metrics.avx import AVX
from lightning_xai.metrics.functional.avx import AVX_KEYS, avx_score

SIZE = 16


class FixedProbabilities(nn.Module):
    """Returns log-probabilities ``p`` whatever the input, so the softmax gives ``p`` back."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.register_buffer("log_probs", torch.tensor(probs).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_probs.expand(x.shape[0], -1)


class MeanDriven(nn.Module):
    """Softmax probabilities ``[z, 0.9 − z, 0.025, 0.025, 0.025, 0.025]`` with ``z`` the mean input value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean((1, 2, 3))
        quarter = torch.full_like(z, 0.025)
        return torch.stack([z, 0.9 - z, quarter, quarter, quarter, quarter], 1).log()


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 7)
    )


def halves(height: int = SIZE, width: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-half and top-half indicator maps: uncorrelated (Pearson 0 exactly)."""
    left = torch.zeros(1, height, width)
    left[..., : width // 2] = 1
    top = torch.zeros(1, height, width)
    top[:, : height // 2] = 1
    return left, top


def textured(seed: int = 0, size: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (size, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)


def harmonic(ssim: float, fsim: float, nmse: float, ad: float) -> float:
    terms = [ssim, fsim, 1 - nmse, 1 - ad]
    return 0.0 if min(terms) <= 0 else 4 / sum(1 / t for t in terms)


# ----------------------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_hit_without_penalty_both_ad_forms() -> None:
    # X = 204 everywhere; S1 keeps the left half, so X̃ is 204 on the left and 0 on the right: z = 0.8 → 0.4.
    images = torch.full((1, 3, SIZE, SIZE), 204, dtype=torch.uint8)
    left, top = halves()
    result = avx_score(MeanDriven(), images, left, top, return_per_sample=True)
    # p(X) = [0.8, 0.1, ...], p(X̃) = [0.4, 0.5, ...]: c1 = 0, y = 0.8, o_standard = 0.4, o_reference = 0.5.
    assert result["ad"].item() == pytest.approx(0.4 / 0.8, abs=1e-5)
    assert result["ad_reference"].item() == pytest.approx(0.3 / 0.8, abs=1e-5)
    assert result["hit_rate"].item() == 1.0
    assert result["class_sensitivity"].item() == 0.0 and result["cs_pass_rate"].item() == 1.0
    assert result["nmse"].item() == pytest.approx(204**2 / 2 / 255**2, abs=1e-6)
    masked = images.float() * left.unsqueeze(1)
    ssim = structural_similarity_index_measure(masked, images.float(), data_range=255.0).item()
    fsim = piq.fsim(masked, images.float(), data_range=255.0, chromatic=True).item()
    assert result["ssim"].item() == pytest.approx(ssim, abs=1e-6)
    assert result["fsim"].item() == pytest.approx(fsim, abs=1e-6)
    expected = harmonic(ssim, fsim, 204**2 / 2 / 255**2, 0.375)
    assert result["avx"].item() == pytest.approx(expected, abs=1e-5)
    standard = avx_score(MeanDriven(), images, left, top, ad_form="standard")
    assert standard["avx"].item() == pytest.approx(harmonic(ssim, fsim, 204**2 / 2 / 255**2, 0.5), abs=1e-5)


def test_miss_with_passing_cs_multiplies_by_one_minus_confidence_change() -> None:
    images = torch.full((1, 3, SIZE, SIZE), 204, dtype=torch.uint8)
    left, top = halves()
    masked = images.float() * left.unsqueeze(1)
    ssim = structural_similarity_index_measure(masked, images.float(), data_range=255.0).item()
    fsim = piq.fsim(masked, images.float(), data_range=255.0).item()
    nmse = 204**2 / 2 / 255**2
    # top_k=1: class 1 (0.5) outranks c1 = 0 (0.4) on X̃, a miss; CS = 0 passes.
    result = avx_score(MeanDriven(), images, left, top, top_k=1, return_per_sample=True)
    factor = 1 - abs(0.8 - 0.5)  # reference form: o = max_k p_k(X̃) = 0.5
    assert result["hit_rate"].item() == 0.0
    assert result["ad_reference"].item() == pytest.approx(0.375 * factor, abs=1e-5)
    assert result["ad"].item() == pytest.approx(0.5 * (1 - abs(0.8 - 0.4)), abs=1e-5)
    assert result["ssim"].item() == pytest.approx(ssim * factor, abs=1e-5)
    assert result["fsim"].item() == pytest.approx(fsim * factor, abs=1e-5)
    assert result["nmse"].item() == pytest.approx(nmse * factor, abs=1e-5)
    expected = harmonic(ssim * factor, fsim * factor, nmse * factor, 0.375 * factor)
    assert result["avx"].item() == pytest.approx(expected, abs=1e-5)


def test_miss_on_unmasked_image_closed_form() -> None:
    # S1 ≥ 0.5 everywhere keeps the whole image: SSIM = FSIMc = 1, nMSE = 0. The model ignores its input.
    probs = [0.4, 0.2, 0.15, 0.1, 0.1, 0.05]
    model = FixedProbabilities(probs)
    images = textured()
    left, top = halves()
    s1 = (0.6 + 0.3 * left).expand(2, -1, -1)
    s2 = top.expand(2, -1, -1)
    # c1 = 5 is the least probable class: a miss. CS = 0 passes. y = 0.05, o_reference = 0.4, AD = 0.
    result = avx_score(model, images, s1, s2, target=5)
    factor = 1 - abs(0.05 - 0.4)
    assert result["hit_rate"].item() == 0.0
    assert result["ssim"].item() == pytest.approx(factor, abs=1e-6)
    assert result["fsim"].item() == pytest.approx(factor, abs=1e-6)
    assert result["nmse"].item() == 0.0 and result["ad_reference"].item() == 0.0
    assert result["avx"].item() == pytest.approx(4 / (2 / factor + 1 + 1), abs=1e-6)
    # The standard form sees no change of c1's probability: the factor is 1 and AVX = 1.
    standard = avx_score(model, images, s1, s2, target=5, ad_form="standard")
    assert standard["avx"].item() == pytest.approx(1.0, abs=1e-6)
    # A hit (c1 = 0 is top-1): no penalty, AVX = 1.
    assert avx_score(model, images, s1, s2, target=0)["avx"].item() == pytest.approx(1.0, abs=1e-6)


def test_miss_with_failed_cs_gives_zero() -> None:
    model = FixedProbabilities([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    images = textured()
    left, _ = halves()
    # S2 = S1: CS = 1 fails the check; c1 = 5 misses.
    result = avx_score(model, images, left.expand(2, -1, -1), left.expand(2, -1, -1), target=5)
    assert result["cs_pass_rate"].item() == 0.0 and result["class_sensitivity"].item() == pytest.approx(1.0)
    assert result["avx"].item() == 0.0
    assert result["ad"].item() == 1.0 and result["ad_reference"].item() == 1.0
    assert result["ssim"].item() == 0.0 and result["fsim"].item() == 0.0 and result["nmse"].item() == 1.0
    # The same maps with a hit are not penalised.
    assert (
        avx_score(model, images, left.expand(2, -1, -1), left.expand(2, -1, -1), target=0)["avx"].item() > 0
    )


def binary_pair(overlap: int, height: int = SIZE, width: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Two binary maps of 160 ones each out of 320 pixels sharing ``overlap`` ones:
    CS = (320·overlap − 160²)/(160·160)."""
    n = height * width
    s1 = torch.zeros(n, dtype=torch.float64)
    s2 = torch.zeros(n, dtype=torch.float64)
    s1[:160] = 1
    s2[160 - overlap : 320 - overlap] = 1
    return s1.view(1, height, width), s2.view(1, height, width)


@pytest.mark.parametrize(
    ("overlap", "cs", "passes"),
    [(124, 0.55, True), (36, -0.55, True), (123, 0.5375, True), (125, 0.5625, False), (80, 0.0, True)],
)
def test_class_sensitivity_threshold(overlap: int, cs: float, passes: bool) -> None:
    model = FixedProbabilities([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    images = torch.randint(
        0, 256, (1, 3, SIZE, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    s1, s2 = binary_pair(overlap)
    result = avx_score(model, images, s1, s2, target=5)
    # CS is compared with the threshold in float64 and reported in the images' precision.
    assert result["class_sensitivity"].item() == pytest.approx(cs, abs=1e-7)
    assert result["cs_pass_rate"].item() == float(passes)
    # A miss: a failed check gives 0, a passed one a positive penalised score.
    assert (result["avx"].item() > 0) == passes
    assert avx_score(model, images, s1, s2, target=5, cs_threshold=0.57)["cs_pass_rate"].item() == 1.0


def test_constant_map_makes_cs_undefined_stored_zero_and_failing() -> None:
    model = FixedProbabilities([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    left, _ = halves()
    result = avx_score(model, textured(size=1), left, torch.full((1, SIZE, SIZE), 0.3), target=5)
    assert result["class_sensitivity"].item() == 0.0
    assert result["cs_pass_rate"].item() == 0.0
    assert result["avx"].item() == 0.0


def test_soft_mask_mode_rounds_the_product() -> None:
    images = torch.full((1, 3, SIZE, SIZE), 101, dtype=torch.uint8)
    maps = torch.full((1, SIZE, SIZE), 0.5)
    maps[..., :4] = 0.25
    _, top = halves()
    result = avx_score(small_cnn(), images, maps, top, mask_mode="soft", return_per_sample=True)
    masked = (images.float() * maps.unsqueeze(1)).round()  # 50.5 → 50 (half to even), 25.25 → 25
    assert result["nmse"].item() == pytest.approx(((masked - 101) ** 2).mean().item() / 255**2, abs=1e-7)
    reference = avx_score(small_cnn(), images, maps, top, return_per_sample=True)
    # The reference mode keeps the pixels where S1 ≥ 0.5 and blackens the rest.
    assert reference["nmse"].item() == pytest.approx(4 / 16 * 101**2 / 255**2, abs=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# The metric


def test_metric_accumulates_and_matches_functional() -> None:
    model = small_cnn()
    images = textured(size=4)
    generator = torch.Generator().manual_seed(1)
    s1, s2 = torch.rand(4, SIZE, SIZE, generator=generator), torch.rand(4, 1, SIZE, SIZE, generator=generator)
    metric = AVX(model, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    metric.update(images[:3], s1[:3], s2[:3])
    metric.update(images[3:], s1[3:], s2[3:])
    result = metric.compute()
    expected = avx_score(model, images, s1, s2, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    assert list(result) == list(AVX_KEYS)
    for key in AVX_KEYS:
        assert torch.allclose(result[key], expected[key], atol=1e-6), key
    assert metric.count.item() == 4
    assert not list(metric.children())


def test_uint8_and_float_pixels_agree_and_normalize_callable() -> None:
    model = small_cnn()
    images = textured(size=3)
    generator = torch.Generator().manual_seed(2)
    s1, s2 = torch.rand(3, SIZE, SIZE, generator=generator), torch.rand(3, SIZE, SIZE, generator=generator)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    a = avx_score(model, images, s1, s2, mean=mean, std=std)
    b = avx_score(
        model,
        images.float() / 255,
        s1,
        s2,
        normalize=lambda x: (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1),
    )
    for key in AVX_KEYS:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_explain_fn_explains_the_runner_up() -> None:
    model = small_cnn()
    images = textured(size=3)
    seen = []

    def saliency(forward_func, inputs, target):
        seen.append(target.clone())
        assert torch.is_grad_enabled()
        inputs = inputs.clone().requires_grad_()
        score = forward_func(inputs).gather(1, target[:, None]).sum()
        return (torch.autograd.grad(score, inputs)[0] * inputs).abs().sum(1)

    s1 = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    metric = AVX(model, explain_fn=saliency, map_normalization="minmax")
    with torch.no_grad():
        metric.update(images, s1, target=torch.tensor([0, 1, 2]))
    with torch.no_grad():
        probs = model(images.float() / 255).softmax(1)
    probs[torch.arange(3), torch.tensor([0, 1, 2])] = -1
    assert torch.equal(seen[0], probs.argmax(1))
    explicit = avx_score(
        model,
        images,
        s1,
        saliency(model, images.float() / 255, seen[0]),
        target=[0, 1, 2],
        map_normalization="minmax",
    )
    result = metric.compute()
    for key in AVX_KEYS:
        assert torch.allclose(result[key], explicit[key], atol=1e-6), key
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        metric.update(images, s1)


@pytest.mark.parametrize("internal_batch_size", [1, 3, 128])
def test_internal_batch_size_chunks_the_forwards(internal_batch_size: int) -> None:
    model = small_cnn()
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = textured(size=4)
    generator = torch.Generator().manual_seed(4)
    s1, s2 = torch.rand(4, SIZE, SIZE, generator=generator), torch.rand(4, SIZE, SIZE, generator=generator)
    result = avx_score(model, images, s1, s2, internal_batch_size=internal_batch_size)
    handle.remove()
    assert len(calls) == math.ceil(8 / internal_batch_size)
    reference = avx_score(model, images, s1, s2, internal_batch_size=128)
    for key in AVX_KEYS:
        assert torch.allclose(result[key], reference[key], atol=1e-6), key


def test_model_flags_restored() -> None:
    model = small_cnn().train()
    images = textured(size=2)
    avx_score(model, images, torch.rand(2, SIZE, SIZE), torch.rand(2, SIZE, SIZE))
    assert all(m.training for m in model.modules())


@settings(max_examples=10, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["reference", "soft"]),
    st.sampled_from(["reference", "standard"]),
)
def test_values_in_range_and_batch_permutation_invariance(seed: int, mask_mode: str, ad_form: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    model = small_cnn(seed % 7)
    images = torch.rand(4, 3, SIZE, SIZE, generator=generator)
    s1, s2 = torch.rand(4, SIZE, SIZE, generator=generator), torch.rand(4, 2, 8, 8, generator=generator)
    kwargs = {"mask_mode": mask_mode, "ad_form": ad_form, "channel_reduction": "max_abs", "top_k": 3}
    result = avx_score(model, images, s1, s2, **kwargs)
    for key in AVX_KEYS:
        low = -1.0 if key == "class_sensitivity" else 0.0
        assert low - 1e-6 <= result[key].item() <= 1 + 1e-6, key
    perm = torch.randperm(4, generator=generator)
    permuted = avx_score(model, images[perm], s1[perm], s2[perm], **kwargs)
    for key in AVX_KEYS:
        assert torch.allclose(result[key], permuted[key], atol=1e-6), key


def test_bad_inputs() -> None:
    model = small_cnn()
    images = textured(size=2)
    s = torch.rand(2, SIZE, SIZE)
    with pytest.raises(ValueError, match="attributions_top2"):
        avx_score(model, images, s)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        avx_score(model, images.float(), s, s)
    with pytest.raises(TypeError, match="uint8"):
        avx_score(model, images.int(), s, s)
    with pytest.raises(ValueError, match="grey"):
        avx_score(model, torch.rand(2, 2, SIZE, SIZE), s, s)
    with pytest.raises(ValueError, match="at least 11x11"):
        avx_score(model, torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="batch size"):
        avx_score(model, images, s[:1], s)
    with pytest.raises(ValueError, match="NaN"):
        avx_score(model, images, s * float("nan"), s)
    with pytest.raises(ValueError, match="map_normalization='minmax'"):
        avx_score(model, images, s * 2, s)
    with pytest.raises(ValueError, match="either `normalize` or `mean`"):
        avx_score(model, images, s, s, normalize=lambda x: x, mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(ValueError, match="together"):
        AVX(model, mean=(0.5,) * 3)
    with pytest.raises(ValueError, match="one per channel"):
        avx_score(model, images, s, s, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match="target"):
        avx_score(model, images, s, s, target=7)
    with pytest.raises(ValueError, match="forward function"):
        avx_score(lambda x: x, images, s, s)
    with pytest.raises(ValueError, match="mask_mode"):
        AVX(model, mask_mode="hard")
    with pytest.raises(ValueError, match="top_k"):
        AVX(model, top_k=0)
    with pytest.raises(ValueError, match="cs_threshold"):
        AVX(model, cs_threshold=2.0)
    with pytest.raises(TypeError, match="explain_fn"):
        AVX(model, explain_fn="gradcam")
    with pytest.raises(ValueError, match="at least 2 classes"):
        AVX(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 1)), explain_fn=lambda f, x, t: x).update(
            images, s
        )


def _ddp_avx(rank: int, world_size: int, images, s1, s2, target) -> dict:
    metric = AVX(small_cnn(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    half = images.shape[0] // world_size
    rows = slice(rank * half, (rank + 1) * half)
    metric.update(images[rows], s1[rows], s2[rows], target[rows])
    return metric.compute()


def test_ddp_equals_single_process(ddp) -> None:
    images = textured(size=4)
    generator = torch.Generator().manual_seed(5)
    s1, s2 = torch.rand(4, SIZE, SIZE, generator=generator), torch.rand(4, SIZE, SIZE, generator=generator)
    target = torch.tensor([0, 3, 6, 1])
    single = AVX(small_cnn(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    single.update(images, s1, s2, target)
    expected = single.compute()
    for result in ddp(_ddp_avx, images, s1, s2, target):
        for key in AVX_KEYS:
            assert torch.allclose(result[key], expected[key], atol=1e-6), key
