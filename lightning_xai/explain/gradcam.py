"""Batched Grad-CAM: the one Grad-CAM of the library (methods, callbacks and metrics call it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import (
    check_inputs_on_model_device,
    check_nonempty_batch,
    check_tensor,
    describe,
    format_target,
)
from ..models import check_logits, forward_module, logits_of, resolve_layer, tokens_to_grid
from .degenerate import constant_rows, warn_uninformative
from .hooks import ActivationTap, forward_hook
from .state import preserved_state, require_grad_mode, warn_if_training


def grad_cam(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    target: int | list[int] | Tensor | None,
    layer: str | int | nn.Module = "auto",
    *,
    relu: bool = True,
    create_graph: bool = False,
    upsample: bool | tuple[int, int] = False,
    normalize: bool = False,
    additional_forward_args: tuple | None = None,
    num_prefix_tokens: int | None = None,
    eps: float = 1e-8,
    warn_uninformative_maps: bool = True,
) -> Tensor:
    """Grad-CAM of ``target`` for a batch, with per-sample targets.

    ``α_k = mean_u ∂z_t/∂A_k(u)`` and ``H = ReLU(Σ_k α_k A_k)`` for the layer output ``A``; one forward and one
    backward for the whole batch.

    Args:
        forward_func: a model (or callable) returning logits or a Hugging Face ``ModelOutput``.
        inputs: the model input, batch first: images (B, C, H, W) or token ids (B, L).
        target: class index per sample (int, list, (B,) tensor); ``None`` means the predicted class.
        layer: the layer whose output is explained: a name, a timm ``feature_info`` index, a module or
            ``"auto"`` (see :func:`lightning_xai.models.resolve_layer`; needs ``forward_func`` to be a module).
        relu: apply the ReLU of Grad-CAM (Captum's ``relu_attributions``).
        create_graph: keep the graph, so the map is differentiable with respect to the parameters
            (for training losses); the forward then counts as training, so BatchNorm statistics it updates in
            training mode are kept. Otherwise the result is detached and every buffer is restored.
        upsample: ``True`` resizes image maps bilinearly to the input's (H, W); a (H, W) tuple to that size.
        normalize: divide each map by its maximum (plus ``eps``), giving [0, 1] for ReLU'd maps.
        additional_forward_args: extra positional arguments for the forward (e.g. an attention mask).
        num_prefix_tokens: for ViT token outputs (B, N, C): leading non-patch tokens (inferred if None).
        warn_uninformative_maps: warn (:class:`~lightning_xai.explain.UninformativeExplanationWarning`) naming
            the images whose map is constant; callers that count such maps themselves pass False. Never with
            ``create_graph`` (a training loss).

    Returns:
        (B, 1, h, w) maps for image models (token layers of a ViT are laid out as a grid), (B, L) per-token
        scores for token models.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
        >>> grad_cam(model, torch.rand(2, 3, 64, 64), target=[0, 3], upsample=True).shape
        torch.Size([2, 1, 64, 64])
    """
    module, layer_module = _checked(forward_func, inputs, layer, create_graph)
    extra = tuple(additional_forward_args or ())
    activation, grads, _ = _layer_gradients(
        forward_func, inputs, target, layer_module, module, extra, create_graph=create_graph
    )
    cam = _cam(
        activation, grads, inputs, module, relu, upsample, normalize, num_prefix_tokens, eps, create_graph
    )
    if warn_uninformative_maps and not create_graph:
        warn_uninformative("grad_cam", constant=constant_rows(cam))
    return cam


def _checked(
    forward_func: Callable[..., Any], inputs: Tensor, layer: str | int | nn.Module, create_graph: bool
) -> tuple[nn.Module | None, nn.Module]:
    """The checks of :func:`grad_cam` before any model call; returns the model (None for a plain callable)
    and the resolved layer."""
    check_tensor("inputs", inputs)
    if inputs.is_floating_point() and inputs.ndim != 4:
        raise ValueError(
            f"`inputs` must be 4-D (B, C, H, W) images or (B, L) token ids, got {describe(inputs)}"
        )
    if not inputs.is_floating_point() and inputs.ndim != 2:
        raise TypeError(
            f"`inputs` must be floating (B, C, H, W) images or integer (B, L) token ids, got {describe(inputs)}; "
            "convert uint8 images with `inputs.float() / 255`"
        )
    check_nonempty_batch("inputs", inputs)
    if not callable(forward_func):
        raise TypeError(f"`forward_func` must be a model or a callable, got {describe(forward_func)}")
    module = forward_module(forward_func)
    if isinstance(layer, nn.Module):
        layer_module = layer
    elif module is None:
        raise TypeError(
            "`layer` must be a module when `forward_func` is not an nn.Module (a name needs the model)"
        )
    else:
        layer_module = resolve_layer(module, layer)
    if module is not None:
        check_inputs_on_model_device("inputs", inputs, module)
    require_grad_mode("grad_cam")
    if not create_graph:  # with create_graph the call is part of a training step
        warn_if_training(module, "grad_cam")
    return module, layer_module


def _layer_gradients(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    target: int | list[int] | Tensor | None,
    layer_module: nn.Module,
    module: nn.Module | None,
    extra: tuple,
    *,
    create_graph: bool = False,
    input_cross_entropy: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The layer's output, the gradient of the target logit with respect to it, and with
    ``input_cross_entropy`` the gradient of the summed cross-entropy of the target with respect to the inputs,
    from the same forward (None otherwise)."""
    tap = ActivationTap()
    batch = inputs.shape[0]
    # With ``create_graph`` the map is part of a training step (its graph is backpropagated): batch statistics
    # of that forward are training statistics, and restoring them in place would break the graph.
    restore = preserved_state(module, layer_module, buffers=not create_graph)
    with restore, torch.enable_grad(), forward_hook(layer_module, tap):
        if input_cross_entropy:
            inputs = inputs.detach().requires_grad_(True)
        logits = check_logits(logits_of(forward_func(inputs, *extra)), batch)
        activation = tap.activation
        if activation is None:
            raise ValueError("the Grad-CAM `layer` was not called by the forward function")
        target_t = format_target(target, batch, logits.shape[1], logits.device)
        if target_t is None:
            target_t = logits.argmax(1)
        score = logits.gather(1, target_t[:, None]).sum()
        (grads,) = torch.autograd.grad(
            score, activation, create_graph=create_graph, retain_graph=input_cross_entropy or None
        )
        input_grad = None
        if input_cross_entropy:
            (input_grad,) = torch.autograd.grad(F.cross_entropy(logits, target_t, reduction="sum"), inputs)
    return activation, grads, input_grad


def grad_cam_and_input_gradient(
    forward_func: Callable[..., Any], inputs: Tensor, target: Tensor, layer: str | int | nn.Module = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`grad_cam` with ``upsample=True, normalize=True`` and, from the same forward, the gradient of the
    summed cross-entropy of ``target`` with respect to ``inputs``: the first step of
    :func:`~lightning_xai.explain.background_pgd` at the clean inputs (its ``initial_gradient``), one forward
    fewer for explanation-consistency scoring."""
    check_tensor("inputs", inputs, ndim=4, floating=True)
    module, layer_module = _checked(forward_func, inputs, layer, False)
    activation, grads, input_grad = _layer_gradients(
        forward_func, inputs, target, layer_module, module, (), input_cross_entropy=True
    )
    cam = _cam(activation, grads, inputs, module, True, True, True, None, 1e-8, False)
    return cam, input_grad.detach()


def _cam(
    activation: Tensor,
    grads: Tensor,
    inputs: Tensor,
    module: nn.Module | None,
    relu: bool,
    upsample: bool | tuple[int, int],
    normalize: bool,
    num_prefix_tokens: int | None,
    eps: float,
    create_graph: bool,
) -> Tensor:
    """The Grad-CAM map from a layer's output and its gradient."""
    spatial_tokens = activation.ndim == 3 and inputs.ndim == 4
    if spatial_tokens:
        activation = tokens_to_grid(activation, num_prefix_tokens, model=module)
        grads = tokens_to_grid(grads, num_prefix_tokens, model=module)
    if activation.ndim == 4:
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * activation).sum(1, keepdim=True)
    elif activation.ndim == 3:
        # token model: (B, L, C) hidden states; channel weights averaged over the token axis
        weights = grads.mean(dim=1, keepdim=True)
        cam = (weights * activation).sum(-1)
    else:
        raise ValueError(
            f"the Grad-CAM layer output must be (B, C, H, W) or (B, N, C), got {describe(activation)}"
        )
    if relu:
        cam = F.relu(cam)
    if upsample and cam.ndim == 4:
        size = tuple(inputs.shape[-2:]) if upsample is True else tuple(upsample)
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    if normalize:
        flat = cam.flatten(1)
        cam = cam / (flat.amax(1).view(-1, *([1] * (cam.ndim - 1))) + eps)
    return cam if create_graph else cam.detach()
