"""Background-only L-infinity PGD (the attack of explanation-consistency reweighting)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_inputs_on_model_device, check_positive, check_tensor, describe, format_target
from ..models import check_logits, forward_module, logits_of
from .normalization import Normalization, resolve_normalization
from .state import preserved_state, require_grad_mode


def background_pgd(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    target: int | list[int] | Tensor,
    background_mask: Tensor,
    *,
    eps: float = 8 / 255,
    step: float = 2 / 255,
    steps: int = 5,
    normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    random_start: bool = False,
    generator: torch.Generator | None = None,
    additional_forward_args: tuple | None = None,
    eval_mode: bool = True,
    initial_gradient: Tensor | None = None,
) -> Tensor:
    """L-infinity PGD that raises the cross-entropy of ``target`` while changing only background pixels.

    ``eps`` and ``step`` are in pixel units: with ``normalization`` (a :class:`Normalization` or a
    ``(mean, std)`` pair; ``mean=``/``std=`` are its deprecated spelling) the inputs are normalised model inputs
    and are mapped to pixels (``x * std + mean``) for the budget and the clipping to ``pixel_range``; without it
    the inputs must already be pixels in ``pixel_range``. Each step::

        g = ∂ CE(f(x + M_bg ⊙ δ / std), y) / ∂δ
        δ ← clip(δ + step · sign(g), −eps, eps)
        δ ← M_bg ⊙ (clip(x_pix + δ, lo, hi) − x_pix)

    Foreground pixels (``background_mask`` 0) of the result equal the input exactly. Gradients are taken with
    ``torch.autograd.grad`` with respect to δ only, so parameters' ``.grad`` are untouched; the model runs in
    eval mode (``eval_mode``) and its flags are restored.

    Args:
        background_mask: (B, 1, H, W) or (B, H, W), bool or {0, 1} (or in [0, 1]): where the attack may act.
        initial_gradient: ``∂ CE(f(x), y) / ∂x`` at the clean inputs, where the caller already has it (e.g.
            from :func:`~lightning_xai.explain.gradcam.grad_cam_and_input_gradient`): the first step uses it
            instead of a forward and backward of its own, with the same result. Not with ``random_start``.

    Returns:
        The attacked inputs, in the inputs' space, detached.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> x, bg = torch.rand(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.bool)
        >>> bg[..., :4] = True
        >>> x_adv = background_pgd(model, x, [0, 1], bg)
        >>> bool((x_adv[..., 4:] == x[..., 4:]).all())
        True
    """
    check_tensor("inputs", inputs, ndim=4, floating=True)
    check_tensor("background_mask", background_mask, ndim=(3, 4))
    if background_mask.ndim == 3:
        background_mask = background_mask.unsqueeze(1)
    if (
        background_mask.shape[0] != inputs.shape[0]
        or background_mask.shape[1] != 1
        or (background_mask.shape[-2:] != inputs.shape[-2:])
    ):
        raise ValueError(
            f"`background_mask` must be (B, 1, H, W) matching the inputs {tuple(inputs.shape)}, got {describe(background_mask)}"
        )
    check_positive("eps", eps, allow_zero=True)
    check_positive("step", step, allow_zero=True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative int, got {steps!r}")
    if initial_gradient is not None:
        check_tensor("initial_gradient", initial_gradient, floating=True)
        if initial_gradient.shape != inputs.shape or random_start:
            raise ValueError(
                "`initial_gradient` must have the inputs' shape and cannot be combined with `random_start` (it is "
                f"the gradient at the clean inputs), got {describe(initial_gradient)} with random_start={random_start}"
            )
    normalization = resolve_normalization(normalization, mean=mean, std=std)
    lo, hi = pixel_range
    module = forward_module(forward_func)
    check_inputs_on_model_device("inputs", inputs, module)
    require_grad_mode("background_pgd")

    pixels = inputs if normalization is None else normalization.denormalize(inputs)
    if float(pixels.min()) < lo - 1e-3 or float(pixels.max()) > hi + 1e-3:
        raise ValueError(
            f"`inputs` lie outside the pixel range {pixel_range} (min {float(pixels.min()):.3f}, max "
            f"{float(pixels.max()):.3f}); pass `normalization=(mean, std)` for normalised inputs"
        )
    mask = background_mask.to(inputs.dtype)
    scale = 1.0 if normalization is None else normalization.std_like(inputs)
    extra = tuple(additional_forward_args or ())
    labels = format_target(target, inputs.shape[0], None, inputs.device)
    if labels is None:
        raise ValueError("`target` is required for background_pgd (the labels whose loss is raised)")

    def project(delta: Tensor) -> Tensor:
        return mask * ((pixels + delta).clamp(lo, hi) - pixels)

    delta = torch.zeros_like(inputs)
    if random_start:
        noise = torch.rand(inputs.shape, generator=generator, device="cpu", dtype=inputs.dtype).to(
            inputs.device
        )
        delta = project((2 * noise - 1) * eps)
    with preserved_state(module, eval_mode=eval_mode), torch.enable_grad():
        for index in range(steps):
            if index == 0 and initial_gradient is not None:
                # the gradient with respect to δ of the same loss at δ = 0 (inputs + δ / scale)
                grad = initial_gradient / scale
            else:
                delta.requires_grad_(True)
                logits = check_logits(
                    logits_of(forward_func(inputs + delta / scale, *extra)), inputs.shape[0]
                )
                if int(labels.max()) >= logits.shape[1]:
                    raise ValueError(f"`target` must be below the number of classes ({logits.shape[1]})")
                loss = F.cross_entropy(logits, labels, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
            delta = project((delta.detach() + step * grad.sign()).clamp(-eps, eps))
    return (inputs + delta / scale).detach()
