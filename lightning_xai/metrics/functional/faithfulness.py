"""Faithfulness by perturbation: deletion / insertion curves (I-GOS and RISE protocols).

The math lives once here, in ``_perturbation_curve_update`` / ``_perturbation_curve_compute``; the public
functions below and the ``Metric`` classes in ``lightning_xai.metrics.faithfulness`` both call them. The
protocols are in ``curve_settings``; Average Drop and Increase in Confidence in ``confidence``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import (
    check_in_choices,
    check_inputs_on_model_device,
    check_internal_batch_size,
    format_target,
)
from ...explain import constant_rows, make_baseline
from ...explain.baselines import BaselineSpec
from ...models import check_logits
from ...models.scoring import Score, scores_from_logits
from .._common import (
    ChannelReduction,
    at_least_float32,
    check_inputs_and_maps,
    forward_of,
    model_context,
    resize_maps,
    resolve_target,
)
from .curve_settings import CurveSettings, Integration, Preset, Resolution, curve_settings


def _ranking_grid(maps: Tensor, resolution: tuple[int, int] | None, size: tuple[int, int]) -> Tensor:
    """Bring (B,h,w) maps to the ranking grid: the input size for pixel ranking, else ``resolution`` by adaptive
    average pooling along the dimensions where the map is larger, then bilinear along those where it is smaller."""
    if resolution is None:
        return resize_maps(maps, size)
    height, width = maps.shape[-2:]
    if (height, width) == resolution:
        return maps
    grid = maps.unsqueeze(1)
    if height > resolution[0] or width > resolution[1]:
        grid = F.adaptive_avg_pool2d(grid, (min(height, resolution[0]), min(width, resolution[1])))
    if tuple(grid.shape[-2:]) != resolution:
        grid = F.interpolate(grid, size=resolution, mode="bilinear", align_corners=False)
    return grid[:, 0]


def _cell_ranks(grid: Tensor) -> Tensor:
    """Position of each cell in the descending ranking, (B, n); a stable sort puts the lower flat index first."""
    flat = grid.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _step_counts(num_cells: int, cells_per_step: int | str, grid_width: int, device: torch.device) -> Tensor:
    """``n_j = min(j k, n)`` for j = 0..J, with ``J = ceil(n / k)``."""
    if cells_per_step == "fiftieth":
        step = max(1, num_cells // 50)
    elif cells_per_step == "row":
        step = grid_width
    else:
        step = int(cells_per_step)
    num_steps = math.ceil(num_cells / step)
    return (torch.arange(num_steps + 1, device=device, dtype=torch.int32) * step).clamp_(max=num_cells)


def _perturbation_curve_update(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object,
    settings: CurveSettings,
    *,
    channel_reduction: ChannelReduction = "sum",
    score: Score = "softmax",
    force_eval: bool = True,
    internal_batch_size: int = 128,
    with_start: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score every perturbed input of a batch and integrate the curves.

    The B × J' perturbed inputs (J' = J steps, plus the unperturbed start when ``with_start`` or the
    integration is the trapezoid) are built chunk by chunk and scored in ``ceil(B J' / internal_batch_size)``
    model calls; ``target=None`` adds ``ceil(B / internal_batch_size)`` calls on the clean inputs. A constant
    map ranks no cell above another (its curve would only follow the cells' index order): its row is skipped,
    costs no model call, and gets NaN.

    Returns the per-sample AUC (B,), the curves (B, J') in step order (their first column is the start,
    n_0 = 0, exactly when J' = J + 1) and the (B,) skipped rows.
    """
    check_in_choices("score", score, ("softmax", "logit"))
    check_internal_batch_size(internal_batch_size, allow_none=False)
    inputs, maps = check_inputs_and_maps(inputs, attributions, channel_reduction)
    formatted = format_target(target, inputs.shape[0], None, inputs.device)
    forward, module = forward_of(forward_func)
    check_inputs_on_model_device("inputs", inputs, module)
    skipped = constant_rows(maps)
    if bool(skipped.any()):
        kept = ~skipped
        auc, curves = _curves(
            forward, module, inputs[kept], maps[kept], None if formatted is None else formatted[kept],
            settings, score, force_eval, internal_batch_size, with_start,
        )  # fmt: skip
        full_auc = auc.new_full((inputs.shape[0],), float("nan")).masked_scatter_(kept, auc)
        full_curves = curves.new_full((inputs.shape[0], curves.shape[1]), float("nan"))
        full_curves[kept] = curves
        return full_auc, full_curves, skipped
    auc, curves = _curves(
        forward, module, inputs, maps, formatted, settings, score, force_eval, internal_batch_size, with_start
    )
    return auc, curves, skipped


def _curves(
    forward: Callable[..., Any],
    module: torch.nn.Module | None,
    inputs: Tensor,
    maps: Tensor,
    formatted: Tensor | None,
    settings: CurveSettings,
    score: Score,
    force_eval: bool,
    internal_batch_size: int,
    with_start: bool,
) -> tuple[Tensor, Tensor]:
    """The AUC (B,) and curves (B, J') of rows whose maps rank their cells."""
    batch, _, height, width = inputs.shape

    grid = _ranking_grid(maps, settings.resolution, (height, width))
    grid_size = tuple(grid.shape[-2:])
    ranks = _cell_ranks(grid).to(torch.int32)
    counts = _step_counts(ranks.shape[1], settings.cells_per_step, grid_size[1], inputs.device)
    num_steps = counts.numel() - 1
    first = 0 if (with_start or settings.integration == "trapezoid") else 1
    points = num_steps + 1 - first
    if batch == 0:  # every row was skipped
        curves = at_least_float32(inputs.new_zeros(0, points))
        return curves[:, 0], curves

    with model_context(module, force_eval), torch.no_grad():
        if formatted is None:
            formatted, _ = resolve_target(
                forward, inputs, None, score=score, internal_batch_size=internal_batch_size
            )
        baseline = make_baseline(
            inputs, settings.baseline, blur_kernel=settings.blur_kernel, blur_sigma=settings.blur_sigma
        )
        # lerp(start, end, U) is exact at U = 0 and U = 1, so the first and last points are the clean and
        # baseline inputs bit for bit.
        start, end = (inputs, baseline) if settings.mode == "deletion" else (baseline, inputs)
        total = batch * points
        # One buffer serves every chunk: a fresh multi-megabyte allocation per chunk costs more (page faults)
        # than building the images. Scores are taken from each chunk's logits before the buffer is rewritten.
        buffer = inputs.new_empty((min(internal_batch_size, total), *inputs.shape[1:]))
        scores = []
        for begin in range(0, total, internal_batch_size):
            stop = min(begin + internal_batch_size, total)
            perturbed = _perturbed_chunk(
                buffer[: stop - begin], start, end, ranks, counts, begin, points, first, grid_size
            )
            logits = check_logits(forward(perturbed), perturbed.shape[0])
            if begin == 0:
                _check_target_range(formatted, logits.shape[1])
            sample = torch.arange(begin, stop, device=inputs.device).div(points, rounding_mode="floor")
            chunk_target = formatted.index_select(0, sample)
            scores.append(scores_from_logits(logits, score).gather(1, chunk_target[:, None])[:, 0])
    curves = at_least_float32(torch.cat(scores).view(batch, points))
    weights = (counts[1:] - counts[:-1]).to(curves.dtype) / counts[-1]
    if settings.integration == "right":
        auc = (curves[:, 1 - first :] * weights).sum(1)
    else:
        auc = ((curves[:, :-1] + curves[:, 1:]) * 0.5 * weights).sum(1)
    return auc, curves


def _perturbed_chunk(
    out: Tensor,
    start: Tensor,
    end: Tensor,
    ranks: Tensor,
    counts: Tensor,
    begin: int,
    points: int,
    first: int,
    grid_size: tuple[int, int],
) -> Tensor:
    """Write rows ``begin..begin+len(out)-1`` of the sample-major stream (row = sample * points + step - first),
    ``lerp(start, end, U_step)``, into ``out`` and return it.

    A chunk is cut into at most three runs: the end of one sample's steps, whole samples, the start of another
    sample's steps. Each run is one broadcast ``lerp`` over (samples, steps) written into the chunk, so the
    clean and baseline images are read in place instead of being gathered once per row.
    """
    image_shape = start.shape[1:]
    stop = begin + out.shape[0]
    first_full = -(-begin // points) * points
    last_full = max(first_full, stop // points * points)
    runs = [(begin, min(stop, first_full)), (first_full, last_full), (max(last_full, begin), stop)]
    for run_begin, run_stop in runs:
        if run_stop <= run_begin:
            continue
        sample = run_begin // points
        if run_stop - run_begin >= points:  # whole samples
            num_samples, num_steps = (run_stop - run_begin) // points, points
            steps = torch.arange(first, first + points, device=start.device)
        else:
            num_samples, num_steps = 1, run_stop - run_begin
            offset = run_begin - sample * points + first
            steps = torch.arange(offset, offset + num_steps, device=start.device)
        samples = slice(sample, sample + num_samples)
        cells = ranks[samples, None, :] < counts[steps][None, :, None]
        mask = cells.to(start.dtype).view(num_samples * num_steps, 1, *grid_size)
        if grid_size != tuple(start.shape[-2:]):
            mask = F.interpolate(mask, size=tuple(start.shape[-2:]), mode="bilinear", align_corners=True)
        dest = out[run_begin - begin : run_stop - begin].view(num_samples, num_steps, *image_shape)
        torch.lerp(
            start[samples, None],
            end[samples, None],
            mask.view(num_samples, num_steps, 1, *mask.shape[-2:]),
            out=dest,
        )
    return out


def _check_target_range(target: Tensor, num_classes: int) -> None:
    if target.numel() and int(target.max()) >= num_classes:
        raise ValueError(
            f"`target` must be below the number of classes ({num_classes}), got maximum {int(target.max())}"
        )


def _perturbation_curve_compute(auc_sum: Tensor, count: Tensor) -> Tensor:
    """Mean AUC over the samples seen (NaN before any sample)."""
    return auc_sum / count


def _curve_functional(
    mode: str,
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object,
    *,
    preset: str,
    resolution: Resolution,
    cells_per_step: int | None,
    baseline: BaselineSpec | None,
    blur_kernel: int | None,
    blur_sigma: float | None,
    integration: str | None,
    channel_reduction: ChannelReduction,
    score: Score,
    force_eval: bool,
    internal_batch_size: int,
    return_curves: bool,
    reduction: str = "mean",
) -> Tensor | dict[str, Tensor]:
    check_in_choices("reduction", reduction, ("mean", "none"))
    settings = curve_settings(
        mode, preset, resolution, cells_per_step, baseline, blur_kernel, blur_sigma, integration
    )
    auc, curves, skipped = _perturbation_curve_update(
        forward_func,
        inputs,
        attributions,
        target,
        settings,
        channel_reduction=channel_reduction,
        score=score,
        force_eval=force_eval,
        internal_batch_size=internal_batch_size,
        with_start=return_curves,
    )
    rows = torch.nonzero(skipped).flatten().tolist()
    if rows:
        where = "are NaN" if reduction == "none" else "are left out of the mean (NaN when every row is)"
        warnings.warn(
            f"{mode}_auc: {len(rows)} of {skipped.numel()} maps are constant (rows {rows}): they rank no cell "
            f"above another, so they were skipped and their AUCs {where}",
            UserWarning,
            stacklevel=3,
        )
    if reduction == "none":
        value = auc
    else:
        kept = ~skipped
        value = _perturbation_curve_compute(auc[kept].sum(), kept.sum())
    if return_curves:
        return {"auc": value, "curves": curves}
    return value


def deletion_auc(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object = None,
    *,
    preset: Preset = "igos",
    resolution: Resolution = "preset",
    cells_per_step: int | None = None,
    baseline: BaselineSpec | None = None,
    blur_kernel: int | None = None,
    blur_sigma: float | None = None,
    integration: Integration | None = None,
    channel_reduction: ChannelReduction = "sum",
    score: Score = "softmax",
    force_eval: bool = True,
    internal_batch_size: int = 128,
    return_curves: bool = False,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor | dict[str, Tensor]:
    """Deletion AUC of a batch: the area under the target score as the most salient cells are replaced by the
    baseline (lower is better). See :class:`~lightning_xai.metrics.DeletionAUC` for every argument.

    Returns the mean AUC over the batch (``reduction="none"``: one AUC per sample), or with
    ``return_curves=True`` a dict ``{"auc": the AUC,
    "curves": (B, J + 1) scores}`` whose column j is the score after removing ``n_j = min(j k, n)`` cells
    (column 0: the clean input).

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import deletion_auc
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> inputs, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
        >>> value = deletion_auc(model, inputs, maps, target=0, resolution=8)
        >>> bool(0 <= value <= 1)
        True
    """
    return _curve_functional(
        "deletion",
        forward_func,
        inputs,
        attributions,
        target,
        preset=preset,
        resolution=resolution,
        cells_per_step=cells_per_step,
        baseline=baseline,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        integration=integration,
        channel_reduction=channel_reduction,
        score=score,
        force_eval=force_eval,
        internal_batch_size=internal_batch_size,
        return_curves=return_curves,
        reduction=reduction,
    )


def insertion_auc(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: object = None,
    *,
    preset: Preset = "igos",
    resolution: Resolution = "preset",
    cells_per_step: int | None = None,
    baseline: BaselineSpec | None = None,
    blur_kernel: int | None = None,
    blur_sigma: float | None = None,
    integration: Integration | None = None,
    channel_reduction: ChannelReduction = "sum",
    score: Score = "softmax",
    force_eval: bool = True,
    internal_batch_size: int = 128,
    return_curves: bool = False,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor | dict[str, Tensor]:
    """Insertion AUC of a batch: the area under the target score as the most salient cells are restored on the
    baseline (higher is better). See :class:`~lightning_xai.metrics.InsertionAUC` for every argument.

    Returns the mean AUC over the batch (``reduction="none"``: one AUC per sample), or with
    ``return_curves=True`` a dict ``{"auc": the AUC,
    "curves": (B, J + 1) scores}`` whose column j is the score after restoring ``n_j = min(j k, n)`` cells
    (column 0: the baseline).

    Example:
        >>> import torch
        >>> from lightning_xai.metrics.functional import insertion_auc
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> inputs, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
        >>> out = insertion_auc(model, inputs, maps, target=0, resolution=4, return_curves=True)
        >>> out["curves"].shape  # 16 cells, one per step, plus the start
        torch.Size([2, 17])
    """
    return _curve_functional(
        "insertion",
        forward_func,
        inputs,
        attributions,
        target,
        preset=preset,
        resolution=resolution,
        cells_per_step=cells_per_step,
        baseline=baseline,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        integration=integration,
        channel_reduction=channel_reduction,
        score=score,
        force_eval=force_eval,
        internal_batch_size=internal_batch_size,
        return_curves=return_curves,
        reduction=reduction,
    )
