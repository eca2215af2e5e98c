"""Explanation consistency under a background-only attack (ECE, arXiv 2408.04600): the per-sample score behind
:class:`~lightning_xai.callbacks.ExplanationConsistencyReweighting`, usable on its own.

``H`` = Grad-CAM of the label, its foreground ``H ≥ fg_threshold``; the background is attacked by
:func:`~lightning_xai.explain.background_pgd`, and ``E`` is the similarity of ``H`` and the Grad-CAM of the
attacked input (the functional core of :class:`~lightning_xai.metrics.ExplanationConsistency`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_flag, check_in_choices, check_int, check_number, check_tensor, describe
from ..._options import Options
from ...explain import Normalization, background_pgd, grad_cam, preserved_state, require_grad_mode
from ...explain.gradcam import grad_cam_and_input_gradient
from ...explain.normalization import resolve_normalization
from ...models import logits_of
from .consistency import Similarity, _explanation_consistency_update

__all__ = ["ConsistencyOptions", "ConsistencyScores", "score_consistency"]


@dataclass(frozen=True)
class ConsistencyOptions(Options):
    """The settings of :func:`score_consistency`, checked once when built.

    Attributes:
        layer: Grad-CAM layer of the explained network: ``"auto"`` (last spatial stage), a name, a timm
            ``feature_info`` index or a module.
        fg_threshold, fg_dilation: foreground ``H ≥ fg_threshold`` of the max-normalised map, dilated by this many
            pixels; the attack acts on the rest.
        eps, step, steps, random_start: the background PGD, in pixel units.
        normalization: how model inputs map to pixels (a :class:`~lightning_xai.explain.Normalization` or a
            ``(mean, std)`` pair); None: the inputs are pixels within ``pixel_range``.
        pixel_range: the pixels' range, for the clipping of the attack.
        similarity: ``"cosine"`` (default), ``"pearson"`` or ``"ssim"``, as in
            :class:`~lightning_xai.metrics.ExplanationConsistency`.
        prediction_agreement: multiply E by ``1[argmax f(x̂) = argmax f(x)]``.
    """

    layer: str | int | nn.Module = "auto"
    fg_threshold: float = 0.5
    fg_dilation: int = 0
    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 5
    random_start: bool = False
    normalization: Normalization | None = None
    pixel_range: tuple[float, float] = (0.0, 1.0)
    similarity: Similarity = "cosine"
    prediction_agreement: bool = False

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        if not isinstance(self.layer, (str, int, nn.Module)) or isinstance(self.layer, bool):
            raise TypeError(f"`layer` must be a name, an index or a module, got {describe(self.layer)}")
        set_field(
            self,
            "fg_threshold",
            check_number("fg_threshold", self.fg_threshold, high=1.0, high_inclusive=True),
        )
        check_int("fg_dilation", self.fg_dilation, 0)
        set_field(self, "eps", check_number("eps", self.eps))
        set_field(self, "step", check_number("step", self.step))
        check_int("steps", self.steps, 0)
        check_flag("random_start", self.random_start)
        set_field(self, "normalization", Normalization.of(self.normalization))
        pixel_range = tuple(self.pixel_range)
        if len(pixel_range) != 2 or not float(pixel_range[0]) < float(pixel_range[1]):
            raise ValueError(f"`pixel_range` must be (low, high) with low < high, got {self.pixel_range!r}")
        set_field(self, "pixel_range", (float(pixel_range[0]), float(pixel_range[1])))
        check_in_choices("similarity", self.similarity, ("cosine", "pearson", "ssim"))
        check_flag("prediction_agreement", self.prediction_agreement)

    def to_config(self) -> dict[str, Any]:
        """The settings as plain values (a module layer by its class name), for logs and checkpoints."""
        config = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        if isinstance(self.layer, nn.Module):
            config["layer"] = type(self.layer).__name__
        config["normalization"] = None if self.normalization is None else self.normalization.to_dict()
        config["pixel_range"] = list(self.pixel_range)
        return config


@dataclass
class ConsistencyScores:
    """Per-sample results of :func:`score_consistency`: ``consistency`` E (B,) in float64, ``degenerate`` (B,)
    bool (a map with zero norm, scored 0), and the (B, 1, H, W) ``background`` masks the attack used."""

    consistency: Tensor
    degenerate: Tensor
    background: Tensor


def score_consistency(
    model: Callable[..., Any],
    inputs: Tensor,
    target: Tensor,
    *,
    options: ConsistencyOptions | None = None,
    generator: torch.Generator | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    **overrides: Any,
) -> ConsistencyScores:
    """Explanation consistency ``E`` of each sample under a background-only attack.

    The settings are a :class:`ConsistencyOptions` (``options``), or its fields by name (``eps=4 / 255``), which
    replace those of ``options``; ``mean=``/``std=`` are the deprecated spelling of ``normalization``.
    ``generator`` draws the random start. With ``prediction_agreement`` a changed prediction makes ``E = 0``.
    The model runs in eval mode; its flags, hooks and parameters' ``.grad`` are as before afterwards.

    Example:
        >>> import torch
        >>> from lightning_xai.models import small_resnet
        >>> model = small_resnet(num_classes=3)
        >>> scores = score_consistency(model, torch.rand(2, 3, 16, 16), torch.tensor([0, 2]))
        >>> scores.consistency.shape, bool(((scores.consistency >= 0) & (scores.consistency <= 1 + 1e-9)).all())
        (torch.Size([2]), True)
    """
    if mean is not None or std is not None:
        overrides["normalization"] = resolve_normalization(overrides.get("normalization"), mean=mean, std=std)
    options = ConsistencyOptions.resolve(options, overrides)
    check_tensor("inputs", inputs, ndim=4, floating=True)
    if not isinstance(target, Tensor) or target.ndim != 1 or target.is_floating_point():
        raise ValueError(
            "`target` must be a (B,) tensor of class indices; multi-label (B, K) targets are not supported by "
            f"explanation-consistency scoring (got {describe(target)})"
        )
    require_grad_mode("explanation-consistency scoring")
    module = model if isinstance(model, nn.Module) else None
    layer = options.layer
    with preserved_state(module, eval_mode=True), torch.enable_grad():
        # one forward gives the clean map and the attack's first gradient (unless the attack starts at random)
        if options.random_start or options.steps == 0:
            heat, first_gradient = (
                grad_cam(
                    model, inputs, target, layer, upsample=True, normalize=True, warn_uninformative_maps=False
                ),
                None,
            )
        else:
            heat, first_gradient = grad_cam_and_input_gradient(model, inputs, target, layer)
        foreground = heat >= options.fg_threshold
        if options.fg_dilation > 0:
            dilation = options.fg_dilation
            foreground = (
                F.max_pool2d(foreground.to(inputs.dtype), 2 * dilation + 1, stride=1, padding=dilation) > 0
            )
        background = ~foreground
        attacked = background_pgd(
            model,
            inputs,
            target,
            background,
            eps=options.eps,
            step=options.step,
            steps=options.steps,
            normalization=options.normalization,
            pixel_range=options.pixel_range,
            random_start=options.random_start,
            generator=generator,
            eval_mode=True,
            initial_gradient=first_gradient,
        )
        heat_attacked = grad_cam(
            model, attacked, target, layer, upsample=True, normalize=True, warn_uninformative_maps=False
        )
        agree = None
        if options.prediction_agreement:
            with torch.no_grad():
                agree = logits_of(model(attacked)).argmax(1) == logits_of(model(inputs)).argmax(1)
    consistency, degenerate = _explanation_consistency_update(
        heat, heat_attacked, agree, similarity=options.similarity, eps=1e-8
    )
    return ConsistencyScores(consistency.to(torch.float64), degenerate, background)
