"""The I-GOS and iGOS++ attribution classes: input checks, the clean forward, and the result's format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..._checks import check_flag, check_inputs_on_model_device, format_target
from ...explain import (
    Normalization,
    constant_rows,
    make_baseline,
    preserved_state,
    require_grad_mode,
    unchanged_rows,
    upsample_mask,
    warn_if_training,
    warn_uninformative,
)
from ...models import LogitsForward, forward_module
from .._base import NormalizedAttribution
from .._common import (
    check_baselines_not_target,
    clean_and_baseline_scores,
    format_additional_forward_args,
    format_inputs,
    format_output,
    make_generator,
)
from .objective import _DELETION, _INSERTION, _Objective
from .optimise import optimise
from .options import IGOSOptions, IGOSPlusPlusOptions, initial_mask

__all__ = ["IGOS", "IGOSPlusPlus"]

_Result = Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]


class _IGOSBase(NormalizedAttribution, GradientAttribution):
    """The optimisation shared by :class:`IGOS` and :class:`IGOSPlusPlus`."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
        *,
        input_normalization: object = None,
    ) -> None:
        super().__init__(forward_func, normalization, input_normalization=input_normalization)
        # Tests and diagnostics set this to a list to receive one record per iteration (masks, gradients,
        # losses, step sizes); None keeps nothing.
        self._trace: list[dict[str, Tensor]] | None = None

    options_class: type[IGOSOptions] = IGOSOptions

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: str | float | Tensor | tuple = "blur",
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        options: IGOSOptions | None = None,
        mask_init: Tensor | tuple[Tensor, Tensor] | None = None,
        return_mask: bool = False,
        show_progress: bool = False,
        **overrides: Any,
    ) -> _Result:
        r"""Optimise the mask of every image and return ``1 - U(M)`` (higher = more important).

        Args:
            inputs: (B, C, H, W) model inputs, or a 1-tuple of them (the output then is a 1-tuple).
            baselines: what a deleted pixel shows: ``"blur"`` (Gaussian, kernel 51, σ 50, reflect-101 borders;
                the references' choice), ``"black"``, ``"zeros"``, ``"mean"``, a number, or a tensor
                broadcastable to the inputs (a 1-tuple of one for tuple inputs). Second, as in Captum.
            target: class per image: an int, a list of B ints or a (B,) tensor; None takes the predicted class.
            additional_forward_args: extra positional arguments of the forward; tensors with one row per image
                are repeated for that image's model inputs, anything else is passed unchanged.
            options: the settings, an ``options_class`` (:class:`~lightning_xai.attr.IGOSOptions` for I-GOS,
                :class:`~lightning_xai.attr.IGOSPlusPlusOptions` for iGOS++); None takes its defaults.
            mask_init: initial mask, (s, s) or (B, 1, s, s) in [0, 1]; ones by default.
            return_mask: also return the (B, 1, s, s) mask M (1 = keep).
            show_progress: show a tqdm bar over the iterations.
            **overrides: fields of the ``options_class`` by name (``mask_size=14``), applied
                over ``options``.

        Returns:
            Attributions of the inputs' shape, dtype and device in [0, 1] (with the inputs' structure), and with
            ``return_mask`` the pair ``(attributions, mask)``.
        """
        return self._attribute(
            inputs,
            baselines,
            target,
            additional_forward_args,
            self.options_class.resolve(options, overrides),
            mask_init=mask_init,
            return_mask=return_mask,
            show_progress=show_progress,
        )

    # -- inputs -------------------------------------------------------------------------------------------

    def _baselines(self, inputs: Tensor, baselines: object) -> Tensor:
        if isinstance(baselines, tuple):
            if len(baselines) != 1:
                raise ValueError(
                    f"`baselines` as a tuple must hold one entry (one input), got {len(baselines)}"
                )
            baselines = baselines[0]
        if isinstance(baselines, str) and baselines == "black" and self.normalization is not None:
            return self.normalization.black(inputs).expand_as(inputs).clone()
        if isinstance(baselines, Tensor) and baselines.ndim == inputs.ndim - 1:
            baselines = baselines.unsqueeze(0)
        out = make_baseline(inputs, baselines)
        return out.expand_as(inputs).to(dtype=inputs.dtype).contiguous()

    # -- the optimisation ---------------------------------------------------------------------------------

    def _attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: object,
        target: object,
        additional_forward_args: object,
        options: IGOSOptions,
        *,
        mask_init: object,
        return_mask: bool,
        show_progress: bool,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        # Every argument is checked before any model call.
        (x,), is_tuple = format_inputs(inputs, max_tensors=1, ndim=4)
        check_baselines_not_target(baselines)
        check_flag("return_mask", return_mask)
        check_flag("show_progress", show_progress)
        size = options.mask_size
        if size[0] > x.shape[-2] or size[1] > x.shape[-1]:
            raise ValueError(
                f"`mask_size` {size} is finer than the {x.shape[-2]}×{x.shape[-1]} inputs: a mask cell would be "
                f"smaller than a pixel; pass at most ({x.shape[-2]}, {x.shape[-1]}) (the references use 28 on "
                "224 px, cells of 8 pixels)"
            )
        variant = "igos" if type(options) is IGOSOptions else "igos+" if options.single_mask else "igos++"
        batch = x.shape[0]
        format_target(target, batch, None, x.device)
        n_masks = 2 if variant == "igos++" else 1
        if n_masks == 2 and isinstance(mask_init, (tuple, list)):
            if len(mask_init) != 2:
                raise ValueError(
                    f"`mask_init` as a pair must hold (deletion, insertion) masks, got {len(mask_init)}"
                )
            inits = [initial_mask(m, batch, size, x, f"mask_init[{i}]") for i, m in enumerate(mask_init)]
        else:
            inits = [initial_mask(mask_init, batch, size, x, "mask_init") for _ in range(n_masks)]
        extra = format_additional_forward_args(additional_forward_args)
        forward = LogitsForward(self.forward_func)
        module = forward_module(self.forward_func)
        check_inputs_on_model_device("inputs", x, module)
        require_grad_mode(type(self).__name__)
        warn_if_training(module, type(self).__name__)
        baseline = self._baselines(x, baselines)
        generator = make_generator(options.seed, x.device)

        with preserved_state(module), torch.enable_grad():
            if module is not None:
                # gradients are taken with respect to the masks only; frozen parameters save the autograd
                # bookkeeping of every weight (preserved_state puts the flags back)
                module.requires_grad_(False)
            labels, clean, at_baseline = clean_and_baseline_scores(
                forward,
                x,
                baseline,
                target,
                extra,
                score=options.score,
                internal_batch_size=options.internal_batch_size,
            )
            if variant == "igos":
                sources, signs, data_weight = (0,), (_DELETION,), 1.0
            elif variant == "igos+":
                sources, signs, data_weight = (0, 0), (_DELETION, _INSERTION), 1.0
            else:
                sources, signs, data_weight = (
                    (0, 0, 1, 2),
                    (_DELETION, _INSERTION, _DELETION, _INSERTION),
                    0.5,
                )
            objective = _Objective(
                forward,
                x.detach(),
                baseline.detach(),
                labels,
                extra,
                score=options.score,
                n_masks=n_masks,
                term_sources=sources,
                term_signs=signs,
                data_weight=data_weight,
                l1_coeff=torch.full((batch,), options.l1_coeff, dtype=x.dtype, device=x.device),
                tv_coeff=options.tv_coeff,
                tv_beta=options.tv_beta,
                btv_sigma=getattr(options, "btv_sigma", None),
                chunk=options.internal_batch_size,
            )
            masks = optimise(
                objective,
                inits,
                clean,
                generator,
                options,
                desc=type(self).__name__,
                show_progress=show_progress,
                trace=self._trace,
            )
        result = objective.result_mask(masks).detach()
        attribution = (1 - upsample_mask(result, tuple(x.shape[-2:]))).clamp_(0, 1).expand_as(x).contiguous()
        warn_uninformative(
            type(self).__name__, unchanged=unchanged_rows(clean, at_baseline), constant=constant_rows(result)
        )
        output = format_output(is_tuple, (attribution,))
        return (output, result) if return_mask else output


class IGOS(_IGOSBase):
    r"""I-GOS: Integrated-Gradients Optimized Saliency (Qi, Khorram and Li, AAAI 2020, arXiv 1905.00954).

    Finds a low-resolution mask ``M`` (1 = keep, 0 = baseline) that minimises

    ``F(M) = f_c(x⊙U(M) + b⊙(1-U(M))) + λ1·mean|1-M| + λ2·TV(M)``

    by descending along the integrated gradient ``∇ (1/S) Σ_k f_c(Φ(x, b, (k/S)·M) + ε_k)`` (plus the
    regularisers' gradient), with Armijo backtracking or Nesterov momentum. ``f_c`` is the target's softmax
    probability (``score="logit"`` for outputs that are not class scores), ``U`` bilinear upsampling with
    ``align_corners=True`` and ``ε_k`` Gaussian noise in model-input units.

    Args:
        forward_func: the model, or any callable returning logits (a Hugging Face ``ModelOutput`` or a tuple
            whose first element is the logits also works).
        normalization: the model's input normalisation (a :class:`~lightning_xai.explain.Normalization` or a
            ``(mean, std)`` pair per channel); it only makes ``baselines="black"`` black in pixel space (otherwise
            black is 0 in model-input units). ``input_normalization=`` is its deprecated name.

    Example:
        >>> import torch
        >>> from lightning_xai.attr import IGOS
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x = torch.rand(2, 3, 16, 16)
        >>> igos = IGOS(model)
        >>> attr, mask = igos.attribute(x, target=[0, 2], mask_size=4, n_iterations=2, n_steps=2, seed=0,
        ...                             return_mask=True)
        >>> attr.shape, mask.shape
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 1, 4, 4]))
        >>> bool(attr.min() >= 0 and attr.max() <= 1)
        True
    """


class IGOSPlusPlus(_IGOSBase):
    r"""iGOS++ (Khorram et al., ACM CHIL 2021, arXiv 2012.15783), and iGOS+ with ``single_mask=True``.

    iGOS++ optimises a deletion mask ``M_d`` and an insertion mask ``M_i`` together. With ``U_p = U(M_d)·U(M_i)``
    and integrated deletion and insertion terms

    ``Del(U) = (1/S) Σ_k f_c(x⊙(k/S)U + b⊙(1-(k/S)U) + ε_k)``,
    ``Ins(U) = -(1/S) Σ_k f_c(b⊙(k/S)U + x⊙(1-(k/S)U) + ε'_k)``,

    it descends on ``½·[Del(U_p) + Ins(U_p) + Del(U(M_d)) + Ins(U(M_i))] + λ1·mean|1-M_p| + λ2·BTV(x, M_p)``,
    ``M_p = M_d·M_i``, where the bilateral total variation lets the mask jump across image edges. The result
    is ``M_p``. iGOS+ uses one mask with ``Del(U(M)) + Ins(U(M))`` and no ½.

    Every argument of :meth:`IGOS.attribute` applies; the settings are :class:`IGOSPlusPlusOptions` (defaults
    ``n_iterations=20`` and ``l1_schedule=False``, and two more fields, ``btv_sigma`` and ``single_mask``).
    ``mask_init`` may be one tensor (every mask) or a ``(M_d, M_i)`` pair, and ``return_mask`` returns ``M_p``.
    Line-search mode ``"plain"`` evaluates each term at the end of its path without noise (one forward per term
    and trial); ``"integrated"`` the objective above with the gradient pass's noise. ``l1_schedule`` watches the
    plain deletion score of ``M_p``.

    Args:
        forward_func: the model, or any callable returning logits.
        normalization: the model's input normalisation, used by ``baselines="black"``.

    Example:
        >>> import torch
        >>> from lightning_xai.attr import IGOSPlusPlus
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x = torch.rand(2, 3, 16, 16)
        >>> attr = IGOSPlusPlus(model).attribute(x, target=1, mask_size=4, n_iterations=2, n_steps=2, seed=0)
        >>> attr.shape
        torch.Size([2, 3, 16, 16])
    """

    options_class = IGOSPlusPlusOptions
