"""MHEX (lightning_xai reconstruction) saliency behind Captum's ``Attribution`` interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from .._checks import (
    check_inputs_on_model_device,
    check_internal_batch_size,
    check_nonempty_batch,
    check_positive,
    check_tensor,
    describe,
    format_target,
)
from ..explain import constant_rows, preserved_state, warn_if_training, warn_uninformative
from ..heads.mhex import LayerWeights, MHEXHandle, MHEXHeads, find_mhex
from ..models import LogitsForward, check_logits, forward_module
from ..models.scoring import chunk_bounds, select_forward_args
from ._base import check_forward_func
from ._common import (
    format_additional_forward_args,
    format_output,
)

__all__ = ["MHEXAttribution"]


class MHEXAttribution(Attribution):
    """Saliency from the MHEX heads of a model (lightning_xai reconstruction): ``S = Σ_l α_l N(U(ReLU(A_l[c])))``.

    One forward per batch (no gradients): each head's class activation map ``A_l[c] = W_eq[c] · x_att`` for the
    target class, ReLU (the non-negativity constraint), bilinear upsampling to the input for images, per-sample
    max normalisation, and the ``α``-weighted sum over heads. Images give (B, 1, H, W) maps in [0, 1]; token ids
    (B, T) scores that are exactly 0 on padding and special tokens.

    Args:
        forward_func: the model with injected heads (:func:`~lightning_xai.heads.inject_mhex`), a module holding
            it (``MHEXClassifier``, a LightningModule trained with ``MultiHeadExplainer``) or a wrapper with
            ``forward_func``; its output may be logits or a Hugging Face ``ModelOutput``.
        heads: the :class:`~lightning_xai.heads.MHEXHeads` (or handle) to read when ``forward_func`` is a plain
            function; found inside ``forward_func`` otherwise.
        layer_weights: ``"uniform"`` (default), ``"inverse_depth"`` (α_l ∝ 1/l, damping the deep over-smoothed
            layers) or one non-negative number per head.
        token_smoothing_sigma: Gaussian smoothing over valid token positions (0 = off).

    Example:
        >>> import timm, torch
        >>> from lightning_xai.heads import inject_mhex
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
        >>> handle = inject_mhex(model)
        >>> maps = MHEXAttribution(model).attribute(torch.rand(2, 3, 32, 32), target=[1, 2])
        >>> maps.shape, bool(maps.min() >= 0), bool(maps.max() <= 1)
        (torch.Size([2, 1, 32, 32]), True, True)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        heads: MHEXHeads | MHEXHandle | None = None,
        layer_weights: LayerWeights = "uniform",
        token_smoothing_sigma: float = 0.0,
    ) -> None:
        check_forward_func(forward_func)
        super().__init__(forward_func)
        if isinstance(heads, MHEXHandle):
            heads = heads.heads
        if heads is None:
            module = forward_module(forward_func)
            heads = find_mhex(module) if module is not None else None
        if not isinstance(heads, MHEXHeads):
            raise ValueError(
                "MHEXAttribution needs a model with MHEX heads: inject them with "
                "`lightning_xai.heads.inject_mhex(model)` (or train with MHEXClassifier / MultiHeadExplainer), "
                f"or pass `heads=`; got {describe(forward_func)} without heads"
            )
        heads.layer_weights(layer_weights)
        check_positive("token_smoothing_sigma", token_smoothing_sigma, allow_zero=True)
        self.heads = heads
        self.layer_weights = layer_weights
        self.token_smoothing_sigma = float(token_smoothing_sigma)
        self._logits = LogitsForward(forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        expand_to_input: bool = False,
        special_tokens_mask: Tensor | None = None,
        internal_batch_size: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        """Saliency of ``target`` (per sample; the predicted class when None).

        Args:
            inputs: images (B, C, H, W) or token ids (B, T), or a one-tensor tuple of them.
            target: int, list or (B,) tensor of classes, or None for the argmax of the main logits.
            additional_forward_args: passed to the forward after the inputs (e.g. the attention mask).
            expand_to_input: broadcast image maps over the input's channels (B, C, H, W).
            special_tokens_mask: (B, T), non-zero on tokens whose saliency must be 0; the ids of the injection's
                ``special_token_ids`` are used when None.
            internal_batch_size: samples per forward (None: the whole batch at once).

        Returns:
            The input's structure: (B, 1, H, W) (or (B, C, H, W) with ``expand_to_input``) in [0, 1], or (B, T).
        """
        is_tuple = isinstance(inputs, tuple)
        tensors = inputs if is_tuple else (inputs,)
        if len(tensors) != 1:
            raise ValueError(
                f"`inputs` must be one tensor (images or token ids) or a one-tensor tuple, got {len(tensors)} tensors"
            )
        x = tensors[0]
        tokens = self.heads.kind == "tokens"
        if tokens:
            check_tensor("inputs", x, ndim=2, finite=False)
            if x.is_floating_point():
                raise TypeError(
                    f"`inputs` of a token model must be integer token ids (B, T), got {describe(x)}"
                )
        else:
            check_tensor("inputs", x, ndim=4, floating=True)
        check_nonempty_batch("inputs", x)
        check_internal_batch_size(internal_batch_size)
        if special_tokens_mask is not None:
            check_tensor("special_tokens_mask", special_tokens_mask, ndim=2, finite=False)
            if special_tokens_mask.shape != x.shape:
                raise ValueError(
                    f"`special_tokens_mask` must have the shape of the token ids {tuple(x.shape)}, "
                    f"got {describe(special_tokens_mask)}"
                )
        module = forward_module(self.forward_func)
        if module is not None:
            check_inputs_on_model_device("inputs", x, module)
        warn_if_training(module, "MHEXAttribution")
        extra = format_additional_forward_args(additional_forward_args)
        batch = x.shape[0]
        formatted = format_target(target, batch, self.heads.num_classes, x.device)

        outputs = []
        for begin, stop in chunk_bounds(batch, internal_batch_size):
            index = torch.arange(begin, stop, device=x.device)
            chunk_extra = select_forward_args(extra, index, batch)
            with torch.no_grad(), preserved_state(module), self.heads.capturing():
                logits = check_logits(self._logits(x[begin:stop], *chunk_extra), stop - begin)
            chunk_target = logits.argmax(1) if formatted is None else formatted[begin:stop]
            mask = None if special_tokens_mask is None else special_tokens_mask[begin:stop]
            outputs.append(
                self.heads.saliency(
                    chunk_target,
                    None if tokens else tuple(x.shape[-2:]),
                    layer_weights=self.layer_weights,
                    token_smoothing_sigma=self.token_smoothing_sigma,
                    special_tokens_mask=mask,
                )
            )
        saliency = torch.cat(outputs)
        warn_uninformative("MHEXAttribution", constant=constant_rows(saliency))
        if expand_to_input and not tokens:
            saliency = saliency.expand(-1, x.shape[1], -1, -1)
        return format_output(is_tuple, (saliency.to(x.dtype) if x.is_floating_point() else saliency,))

    # Captum's base class declares these; an explicit error is clearer than its NotImplementedError.
    def compute_convergence_delta(self, *args: Any, **kwargs: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError("MHEXAttribution has no convergence delta")
