"""I-GOS and iGOS++: saliency masks optimised with integrated gradients (``docs/methods/igos.md``).

Both methods look for a low-resolution mask ``M`` (1 = keep a pixel, 0 = show the baseline there) whose
deletion lowers the target's score, descending along an *integrated* gradient: the gradient averaged over the
straight path from the all-baseline image to the current masked image. iGOS++ optimises a deletion and an
insertion mask together and regularises with a bilateral total variation that lets the mask jump at image
edges.

The whole batch is one optimisation. Per iteration, the model inputs are the rows (image, term, path point),
flattened image-major and pushed through the model in chunks of ``internal_batch_size`` rows; every image keeps
its own step size, L1 weight and convergence flag, and an image that has finished costs nothing more. The
noise is drawn per iteration and term from one generator and shared by all images, so a result depends only on
the seed and the image, never on the batch it came in or on the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from captum.attr import GradientAttribution
from torch import Tensor
from tqdm import tqdm

from .._checks import (
    check_inputs_on_model_device,
    check_internal_batch_size,
    check_tensor,
    describe,
    format_target,
)
from ..explain import make_baseline, preserved_state, require_grad_mode, upsample_mask
from ..models import LogitsForward, check_logits
from ._common import (
    Score,
    check_baselines_not_target,
    chunk_bounds,
    clean_scores,
    format_additional_forward_args,
    format_inputs,
    format_output,
    forward_module,
    make_generator,
    scores_from_logits,
    select_forward_args,
    warn_if_training,
)

__all__ = ["IGOS", "IGOSPlusPlus"]

Optimizer = Literal["line_search", "nag"]
LineSearch = Literal["integrated", "plain"]

#: The default Armijo objective, chosen by the benchmark as spec §2 asks: on 32 synthetic shapes images
#: (benchmarks/bench_igos.py), I-GOS's deletion AUC was 0.2921 with ``"plain"`` and 0.2955 with
#: ``"integrated"`` (within the 0.01 margin, so the cheaper one wins) at 3.5× lower cost (275 vs 966
#: pass-equivalents per image, ResNet-18 at 224 px).
DEFAULT_LINE_SEARCH: LineSearch = "plain"

# The L1 schedule of the I-GOS reference: (iteration as a fraction divisor of T, |p0 - p| threshold, factor).
_L1_SCHEDULE = ((2.0, 1e-3, 10.0), (1.25, 1e-2, 5.0))

_DELETION, _INSERTION = 1.0, -1.0


# ----------------------------------------------------------------------------------------------------------
# Regularisers: per-sample values of (n, 1, s, s) masks, means rather than sums so that λ does not depend on s
# ----------------------------------------------------------------------------------------------------------


def _area(mask: Tensor) -> Tensor:
    """``A(M) = mean |1 - M|`` per sample. Autograd's subgradient of |·| is 0 at M = 1, so cells still at 1
    are not pushed (writing ``1 - M`` would push them)."""
    return (1 - mask).abs().flatten(1).mean(1)


def _differences(values: Tensor) -> tuple[Tensor, Tensor]:
    return values[..., 1:, :] - values[..., :-1, :], values[..., :, 1:] - values[..., :, :-1]


def _total_variation(mask: Tensor, beta: float = 2.0) -> Tensor:
    """``TV(M) = mean |Δv M|^β + mean |Δh M|^β`` per sample."""
    vertical, horizontal = _differences(mask)
    return vertical.abs().pow(beta).flatten(1).mean(1) + horizontal.abs().pow(beta).flatten(1).mean(1)


def _edge_weights(inputs: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Bilateral weights ``mean_c exp(-(Δ x_c)² / σ)``, vertical (n,1,H-1,W) and horizontal (n,1,H,W-1).

    The same channel average in both directions (the reference averages the vertical one differently)."""
    vertical, horizontal = _differences(inputs)
    return (
        torch.exp(-vertical.pow(2) / sigma).mean(1, keepdim=True),
        torch.exp(-horizontal.pow(2) / sigma).mean(1, keepdim=True),
    )


def _bilateral_tv(
    mask: Tensor, upsampled: Tensor, weights: tuple[Tensor, Tensor], beta: float = 2.0
) -> Tensor:
    """``BTV = ½ [TV(M) + mean w^v |Δv U|^β + mean w^h |Δh U|^β]`` per sample, with U the upsampled mask."""
    vertical, horizontal = _differences(upsampled)
    smooth_v = (weights[0] * vertical.abs().pow(beta)).flatten(1).mean(1)
    smooth_h = (weights[1] * horizontal.abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (_total_variation(mask, beta) + smooth_v + smooth_h)


# ----------------------------------------------------------------------------------------------------------
# The batched objective
# ----------------------------------------------------------------------------------------------------------


class _Objective:
    """Everything one ``attribute`` call needs to evaluate the objective of any subset of its images.

    A *term* is one integrated path: a deletion term scores ``b + (x - b)·(k/S)·U`` (the baseline turning into
    the masked image), an insertion term ``x + (b - x)·(k/S)·U`` (the clean image turning into the baseline
    where U is 1). ``term_sources`` picks each term's upsampled mask from the candidates ``[U(M)]`` (one mask)
    or ``[U(M_d)·U(M_i), U(M_d), U(M_i)]`` (two masks); ``data_weight`` scales the data part (½ for iGOS++).
    """

    def __init__(
        self,
        forward: LogitsForward,
        inputs: Tensor,
        baselines: Tensor,
        target: Tensor,
        extra: tuple[Any, ...],
        *,
        score: Score,
        n_masks: int,
        term_sources: tuple[int, ...],
        term_signs: tuple[float, ...],
        data_weight: float,
        l1_coeff: Tensor,
        tv_coeff: float,
        tv_beta: float,
        btv_sigma: float | None,
        chunk: int | None,
    ) -> None:
        self.forward = forward
        self.inputs = inputs
        self.baselines = baselines
        self.difference = inputs - baselines
        self.target = target
        self.extra = extra
        self.score = score
        self.n_masks = n_masks
        self.term_sources = term_sources
        self.n_terms = len(term_sources)
        signs = torch.tensor(term_signs, dtype=inputs.dtype, device=inputs.device)
        self.term_weights = data_weight * signs
        self.insertion_terms = signs < 0
        self.l1_coeff = l1_coeff
        self.tv_coeff = tv_coeff
        self.tv_beta = tv_beta
        self.edge_weights = None if btv_sigma is None else _edge_weights(inputs, btv_sigma)
        self.chunk = chunk

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.inputs.shape[-2:])

    def result_mask(self, masks: Sequence[Tensor]) -> Tensor:
        return masks[0] if self.n_masks == 1 else masks[0] * masks[1]

    def _term_masks(self, masks: Sequence[Tensor]) -> Tensor:
        """The upsampled mask of every term, (n, terms, 1, H, W)."""
        upsampled = [upsample_mask(mask, self.size) for mask in masks]
        candidates = upsampled if self.n_masks == 1 else [upsampled[0] * upsampled[1], *upsampled]
        return torch.stack([candidates[source] for source in self.term_sources], dim=1)

    def data(
        self,
        masks: Sequence[Tensor],
        images: Tensor,
        points: Tensor,
        noise: Tensor | None,
        need_grad: bool,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Data part of the objective of ``images`` (n,) with ``masks`` (n, 1, s, s) each, and its gradient.

        ``points`` (P,) are the path fractions k/S (the plain objective uses ``[1.]``); ``noise`` is
        (terms, P, C, H, W) or None. Rows (image, term, point) go through the model in chunks; each chunk
        rebuilds its composed inputs from fresh leaves, so memory is bounded by one chunk's graph.
        """
        n_points = points.numel()
        per_image = self.n_terms * n_points
        batch = self.inputs.shape[0]
        device = self.inputs.device
        loss = self.inputs.new_zeros(images.numel())
        grads = [torch.zeros_like(mask) for mask in masks] if need_grad else None
        row_weights = self.term_weights / n_points
        flat_noise = None if noise is None else noise.reshape(-1, *self.inputs.shape[1:])
        for begin, stop in chunk_bounds(images.numel() * per_image, self.chunk):
            first, last = begin // per_image, (stop - 1) // per_image + 1
            rows = torch.arange(begin, stop, device=device)
            local = rows.div(per_image, rounding_mode="floor") - first
            term = rows.div(n_points, rounding_mode="floor") % self.n_terms
            point = rows % n_points
            sample = images[first:last].index_select(0, local)
            with torch.set_grad_enabled(need_grad):
                leaves = [mask[first:last].detach().requires_grad_(need_grad) for mask in masks]
                paths = self._term_masks(leaves)[local, term] * points[point].view(-1, 1, 1, 1)
                # an insertion row x + (b - x)·u is b + (x - b)·(1 - u): one formula for both kinds
                paths = torch.where(self.insertion_terms[term].view(-1, 1, 1, 1), 1 - paths, paths)
                composed = torch.addcmul(
                    self.baselines.index_select(0, sample), self.difference.index_select(0, sample), paths
                )
                if flat_noise is not None:
                    composed = composed + flat_noise.index_select(0, term * n_points + point)
                extra = select_forward_args(self.extra, sample, batch)
                logits = check_logits(self.forward(composed, *extra), stop - begin)
                scores = scores_from_logits(logits, self.score)
                weighted = (
                    scores.gather(1, self.target.index_select(0, sample)[:, None])[:, 0] * row_weights[term]
                )
                loss[first:last] += torch.zeros_like(loss[first:last]).index_add_(0, local, weighted.detach())
                if grads is not None:
                    for total, part in zip(grads, torch.autograd.grad(weighted.sum(), leaves), strict=True):
                        total[first:last] += part
        return loss, grads

    def regulariser(
        self, masks: Sequence[Tensor], images: Tensor, need_grad: bool
    ) -> tuple[Tensor, list[Tensor] | None]:
        """``λ1·A(M) + λ2·TV(M)`` (or ``λ2·BTV``) of the result mask, per sample, and its gradient."""
        with torch.set_grad_enabled(need_grad):
            leaves = [mask.detach().requires_grad_(need_grad) for mask in masks]
            result = self.result_mask(leaves)
            value = self.l1_coeff.index_select(0, images) * _area(result)
            if self.edge_weights is None:
                smooth = _total_variation(result, self.tv_beta)
            else:
                weights = tuple(w.index_select(0, images) for w in self.edge_weights)
                smooth = _bilateral_tv(result, upsample_mask(result, self.size), weights, self.tv_beta)
            value = value + self.tv_coeff * smooth
            grads = list(torch.autograd.grad(value.sum(), leaves)) if need_grad else None
        return value.detach(), grads

    def plain_scores(self, mask: Tensor, images: Tensor) -> Tensor:
        """Noise-free score of ``x`` masked by ``mask`` (deletion at the path's end), (n,), under no_grad."""
        scores = []
        batch = self.inputs.shape[0]
        with torch.no_grad():
            for begin, stop in chunk_bounds(images.numel(), self.chunk):
                sample = images[begin:stop]
                up = upsample_mask(mask[begin:stop], self.size)
                composed = torch.addcmul(
                    self.baselines.index_select(0, sample), self.difference.index_select(0, sample), up
                )
                extra = select_forward_args(self.extra, sample, batch)
                logits = check_logits(self.forward(composed, *extra), stop - begin)
                scores.append(
                    scores_from_logits(logits, self.score).gather(
                        1, self.target.index_select(0, sample)[:, None]
                    )
                )
        return torch.cat(scores)[:, 0]


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_number(name: str, value: object, *, low: float = 0.0, strict: bool = False, high=None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if strict else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bound += f" and < {high}"
        raise ValueError(f"`{name}` must be a number {bound}, got {value!r}")
    return float(value)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {describe(value)}")


def _mask_size(value: object) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in pair)
    ):
        raise ValueError(f"`mask_size` must be an int >= 2 or a (height, width) pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _initial_mask(value: object, batch: int, size: tuple[int, int], like: Tensor, name: str) -> Tensor:
    if value is None:
        return like.new_ones(batch, 1, *size)
    check_tensor(name, value, floating=True)
    mask = value.to(device=like.device, dtype=like.dtype)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[-2:]) != size or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"`{name}` must be (s, s), (1, 1, s, s) or (B, 1, s, s) with s = mask_size {size} and B = {batch}, "
            f"got {describe(value)}"
        )
    if bool((mask < 0).any() or (mask > 1).any()):
        raise ValueError(
            f"`{name}` must lie in [0, 1], got values in [{float(mask.min())}, {float(mask.max())}]"
        )
    return mask.expand(batch, 1, *size).clone()


# ----------------------------------------------------------------------------------------------------------
# The shared method
# ----------------------------------------------------------------------------------------------------------


class _IGOSBase(GradientAttribution):
    """The optimisation shared by :class:`IGOS` and :class:`IGOSPlusPlus`."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        input_normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"`forward_func` must be a model or a callable, got {describe(forward_func)}")
        super().__init__(forward_func)
        if input_normalization is not None:
            if not isinstance(input_normalization, (tuple, list)) or len(input_normalization) != 2:
                raise ValueError(
                    "`input_normalization` must be a (mean, std) pair of per-channel sequences, "
                    f"got {describe(input_normalization)}"
                )
            mean, std = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in input_normalization)
            if mean.numel() != std.numel() or not bool((std > 0).all()):
                raise ValueError(
                    "`input_normalization` must hold one mean and one positive std per channel, "
                    f"got {input_normalization!r}"
                )
            input_normalization = (mean, std)
        self.input_normalization = input_normalization
        # Tests and diagnostics set this to a list to receive one record per iteration (masks, gradients,
        # losses, step sizes); None keeps nothing.
        self._trace: list[dict[str, Tensor]] | None = None

    # -- inputs -------------------------------------------------------------------------------------------

    def _baselines(self, inputs: Tensor, baselines: object) -> Tensor:
        if isinstance(baselines, tuple):
            if len(baselines) != 1:
                raise ValueError(
                    f"`baselines` as a tuple must hold one entry (one input), got {len(baselines)}"
                )
            baselines = baselines[0]
        if isinstance(baselines, str) and baselines == "black" and self.input_normalization is not None:
            mean, std = self.input_normalization
            if mean.numel() != inputs.shape[1]:
                raise ValueError(
                    f"`input_normalization` has {mean.numel()} channels but the inputs have {inputs.shape[1]}"
                )
            black = (-mean / std).to(device=inputs.device, dtype=inputs.dtype)
            return black.view(1, -1, 1, 1).expand_as(inputs).clone()
        if isinstance(baselines, Tensor) and baselines.ndim == inputs.ndim - 1:
            baselines = baselines.unsqueeze(0)
        out = make_baseline(inputs, baselines)
        return out.expand_as(inputs).to(dtype=inputs.dtype).contiguous()

    # -- the optimisation ---------------------------------------------------------------------------------

    def _attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: object,
        baselines: object,
        additional_forward_args: object,
        *,
        variant: str,
        mask_size: int | tuple[int, int],
        n_iterations: int,
        n_steps: int,
        l1_coeff: float,
        tv_coeff: float,
        tv_beta: float,
        optimizer: str,
        line_search: str,
        max_step: float,
        armijo_c: float,
        step_decay: float,
        min_step: float,
        noise_std: float,
        l1_schedule: bool,
        mask_init: object,
        score: str,
        tol: float | None,
        seed: int | None,
        internal_batch_size: int | None,
        return_mask: bool,
        show_progress: bool,
        btv_sigma: float | None = None,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        # Every argument is checked before any model call.
        (x,), is_tuple = format_inputs(inputs, max_tensors=1, ndim=4)
        check_baselines_not_target(baselines)
        size = _mask_size(mask_size)
        n_iterations = _check_int("n_iterations", n_iterations, 1)
        n_steps = _check_int("n_steps", n_steps, 1)
        l1_value = _check_number("l1_coeff", l1_coeff)
        tv_coeff = _check_number("tv_coeff", tv_coeff)
        tv_beta = _check_number("tv_beta", tv_beta, strict=True)
        _check_choice("optimizer", optimizer, ("line_search", "nag"))
        _check_choice("line_search", line_search, ("integrated", "plain"))
        max_step = _check_number("max_step", max_step, strict=True)
        armijo_c = _check_number("armijo_c", armijo_c)
        step_decay = _check_number("step_decay", step_decay, strict=True, high=1.0)
        min_step = _check_number("min_step", min_step, strict=True)
        noise_std = _check_number("noise_std", noise_std)
        _check_flag("l1_schedule", l1_schedule)
        _check_choice("score", score, ("softmax", "logit"))
        if tol is not None:
            tol = _check_number("tol", tol, strict=True)
        check_internal_batch_size(internal_batch_size)
        _check_flag("return_mask", return_mask)
        _check_flag("show_progress", show_progress)
        if btv_sigma is not None:
            btv_sigma = _check_number("btv_sigma", btv_sigma, strict=True)
        batch = x.shape[0]
        format_target(target, batch, None, x.device)
        n_masks = 2 if variant == "igos++" else 1
        if n_masks == 2 and isinstance(mask_init, (tuple, list)):
            if len(mask_init) != 2:
                raise ValueError(
                    f"`mask_init` as a pair must hold (deletion, insertion) masks, got {len(mask_init)}"
                )
            inits = [_initial_mask(m, batch, size, x, f"mask_init[{i}]") for i, m in enumerate(mask_init)]
        else:
            inits = [_initial_mask(mask_init, batch, size, x, "mask_init") for _ in range(n_masks)]
        extra = format_additional_forward_args(additional_forward_args)
        forward = LogitsForward(self.forward_func)
        module = forward_module(self.forward_func)
        check_inputs_on_model_device("inputs", x, module)
        require_grad_mode(type(self).__name__)
        warn_if_training(module, type(self).__name__)
        baseline = self._baselines(x, baselines)
        generator = make_generator(seed, x.device)

        with preserved_state(module), torch.enable_grad():
            if module is not None:
                # gradients are taken with respect to the masks only; frozen parameters save the autograd
                # bookkeeping of every weight (preserved_state puts the flags back)
                module.requires_grad_(False)
            labels, clean = clean_scores(
                forward, x, target, extra, score=score, internal_batch_size=internal_batch_size
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
                score=score,
                n_masks=n_masks,
                term_sources=sources,
                term_signs=signs,
                data_weight=data_weight,
                l1_coeff=torch.full((batch,), l1_value, dtype=x.dtype, device=x.device),
                tv_coeff=tv_coeff,
                tv_beta=tv_beta,
                btv_sigma=btv_sigma,
                chunk=internal_batch_size,
            )
            masks = self._optimise(
                objective,
                inits,
                clean,
                generator,
                n_iterations=n_iterations,
                n_steps=n_steps,
                optimizer=optimizer,
                line_search=line_search,
                max_step=max_step,
                armijo_c=armijo_c,
                step_decay=step_decay,
                min_step=min_step,
                noise_std=noise_std,
                l1_schedule=l1_schedule,
                tol=tol,
                show_progress=show_progress,
            )
        result = objective.result_mask(masks).detach()
        attribution = (1 - upsample_mask(result, tuple(x.shape[-2:]))).clamp_(0, 1).expand_as(x).contiguous()
        output = format_output(is_tuple, (attribution,))
        return (output, result) if return_mask else output

    def _optimise(
        self,
        objective: _Objective,
        masks: list[Tensor],
        clean: Tensor,
        generator: torch.Generator,
        *,
        n_iterations: int,
        n_steps: int,
        optimizer: str,
        line_search: str,
        max_step: float,
        armijo_c: float,
        step_decay: float,
        min_step: float,
        noise_std: float,
        l1_schedule: bool,
        tol: float | None,
        show_progress: bool,
    ) -> list[Tensor]:
        x = objective.inputs
        batch = x.shape[0]
        points = torch.arange(1, n_steps + 1, dtype=x.dtype, device=x.device) / n_steps
        endpoint = torch.ones(1, dtype=x.dtype, device=x.device)
        converged = torch.zeros(batch, dtype=torch.bool, device=x.device)
        previous_theta = [mask.clone() for mask in masks] if optimizer == "nag" else None
        schedule = (
            {int(n_iterations / divisor): (threshold, factor) for divisor, threshold, factor in _L1_SCHEDULE}
            if l1_schedule and n_iterations > 3
            else {}
        )
        for iteration in tqdm(range(n_iterations), desc=type(self).__name__, disable=not show_progress):
            # Noise is drawn for every iteration and term whether or not an image still needs it, so that the
            # stream, and hence every image's result, does not depend on the other images.
            noise = None
            if noise_std > 0:
                noise = noise_std * torch.randn(
                    (objective.n_terms, n_steps, *x.shape[1:]),
                    generator=generator,
                    dtype=x.dtype,
                    device=x.device,
                )
            active = (~converged).nonzero()[:, 0]
            if active.numel() == 0:
                break
            if iteration in schedule:
                threshold, factor = schedule[iteration]
                score_now = objective.plain_scores(objective.result_mask([m[active] for m in masks]), active)
                stuck = (clean[active] - score_now).abs() <= threshold
                objective.l1_coeff[active] = torch.where(
                    stuck, objective.l1_coeff[active] / factor, objective.l1_coeff[active]
                )
            current = [mask[active] for mask in masks]
            data, data_grads = objective.data(current, active, points, noise, need_grad=True)
            regulariser, regulariser_grads = objective.regulariser(current, active, need_grad=True)
            grads = [a + b for a, b in zip(data_grads, regulariser_grads, strict=True)]
            record: dict[str, Tensor] = {}
            if optimizer == "nag":
                momentum = iteration / (iteration + 3)
                theta = [m - max_step * g for m, g in zip(current, grads, strict=True)]
                updated = [
                    (t + momentum * (t - p[active])).clamp(0, 1)
                    for t, p in zip(theta, previous_theta, strict=True)
                ]
                for p, t in zip(previous_theta, theta, strict=True):
                    p[active] = t
            else:
                if line_search == "integrated":
                    loss = data + regulariser
                    trial_points, trial_noise = points, noise
                else:
                    loss = objective.data(current, active, endpoint, None, need_grad=False)[0] + regulariser
                    trial_points, trial_noise = endpoint, None
                updated, step = self._armijo(
                    objective,
                    current,
                    grads,
                    loss,
                    active,
                    trial_points,
                    trial_noise,
                    max_step=max_step,
                    armijo_c=armijo_c,
                    step_decay=step_decay,
                    min_step=min_step,
                    record=record,
                )
                record.update(loss=loss, step=step)
            if self._trace is not None:
                self._trace.append(
                    {
                        "iteration": torch.tensor(iteration),
                        "images": active,
                        "masks": torch.stack(current, 1),
                        "grads": torch.stack(grads, 1),
                        "l1_coeff": objective.l1_coeff[active].clone(),
                        **record,
                    }
                )
            if tol is not None:
                change = torch.stack(
                    [(u - c).abs().flatten(1).amax(1) for u, c in zip(updated, current, strict=True)]
                )
                converged[active] = change.amax(0) < tol
            for mask, new in zip(masks, updated, strict=True):
                mask[active] = new
        return masks

    @staticmethod
    def _armijo(
        objective: _Objective,
        current: list[Tensor],
        grads: list[Tensor],
        loss: Tensor,
        images: Tensor,
        points: Tensor,
        noise: Tensor | None,
        *,
        max_step: float,
        armijo_c: float,
        step_decay: float,
        min_step: float,
        record: dict[str, Tensor],
    ) -> tuple[list[Tensor], Tensor]:
        """Backtracking from ``max_step`` by ``step_decay`` until ``L(M') <= L(M) - c·α·‖g‖²``; once α falls below
        ``min_step`` the step is taken untested. Only images still searching are evaluated at each trial."""
        count = images.numel()
        step = loss.new_full((count,), max_step)
        searching = torch.ones(count, dtype=torch.bool, device=loss.device)
        accepted = torch.zeros_like(searching)
        grad_norm2 = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        updated = [torch.empty_like(m) for m in current]
        while True:
            todo = searching.nonzero()[:, 0]
            if todo.numel() == 0:
                break
            alpha = step[todo].view(-1, 1, 1, 1)
            trial = [(m[todo] - alpha * g[todo]).clamp(0, 1) for m, g in zip(current, grads, strict=True)]
            value = objective.regulariser(trial, images[todo], need_grad=False)[0]
            value = value + objective.data(trial, images[todo], points, noise, need_grad=False)[0]
            ok = value <= loss[todo] - armijo_c * step[todo] * grad_norm2[todo]
            done = todo[ok]
            for out, t in zip(updated, trial, strict=True):
                out[done] = t[ok]
            accepted[done] = True
            searching[done] = False
            failed = todo[~ok]
            step[failed] = step[failed] * step_decay
            searching[failed] = step[failed] >= min_step
        floor = ~accepted
        if bool(floor.any()):
            alpha = step[floor].view(-1, 1, 1, 1)
            for out, m, g in zip(updated, current, grads, strict=True):
                out[floor] = (m[floor] - alpha * g[floor]).clamp(0, 1)
        record.update(accepted=accepted, grad_norm2=grad_norm2)
        return updated, step


# ----------------------------------------------------------------------------------------------------------
# Public classes
# ----------------------------------------------------------------------------------------------------------


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
        input_normalization: ``(mean, std)`` per channel of the model's input normalisation; it only makes
            ``baselines="black"`` black in pixel space (otherwise black is 0 in model-input units).

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

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: str | float | Tensor | tuple = "blur",
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        mask_size: int | tuple[int, int] = 28,
        n_iterations: int = 15,
        n_steps: int = 20,
        l1_coeff: float = 1.0,
        tv_coeff: float = 20.0,
        tv_beta: float = 2,
        optimizer: Optimizer = "line_search",
        line_search: LineSearch = DEFAULT_LINE_SEARCH,
        max_step: float = 1000.0,
        armijo_c: float = 1e-4,
        step_decay: float = 0.2,
        min_step: float = 1e-5,
        noise_std: float = 0.2,
        l1_schedule: bool = True,
        mask_init: Tensor | None = None,
        score: Score = "softmax",
        tol: float | None = None,
        seed: int | None = None,
        internal_batch_size: int | None = None,
        return_mask: bool = False,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        r"""Optimise one mask per image and return ``1 - U(M)`` (higher = more important).

        Args:
            inputs: (B, C, H, W) model inputs, or a 1-tuple of them (the output then is a 1-tuple).
            baselines: what a deleted pixel shows: ``"blur"`` (Gaussian, kernel 51, σ 50, reflect-101 borders;
                the references' choice), ``"black"``, ``"zeros"``, ``"mean"``, a number, or a tensor
                broadcastable to the inputs (a 1-tuple of one for tuple inputs). Second, as in Captum.
            target: class per image: an int, a list of B ints or a (B,) tensor; None takes the predicted class.
            additional_forward_args: extra positional arguments of the forward; tensors with one row per image
                are repeated for that image's model inputs, anything else is passed unchanged.
            mask_size: side ``s`` of the mask (or ``(h, w)``); the references use 28.
            n_iterations: optimisation steps T.
            n_steps: points S on the integration path.
            l1_coeff: weight λ1 of the area term ``mean|1 - M|``.
            tv_coeff: weight λ2 of the total variation ``mean|ΔM|^β`` (both directions).
            tv_beta: the exponent β.
            optimizer: ``"line_search"`` (Armijo backtracking) or ``"nag"`` (Nesterov momentum with the fixed
                step ``max_step``; no line-search forwards).
            line_search: the Armijo objective. ``"plain"`` (default): the noise-free ``f_c(Φ(x, b, M)) + R``,
                one forward per trial (the I-GOS reference). ``"integrated"``: the integrated loss that the
                gradient belongs to, with the same noise as the gradient pass, S forwards per trial. The
                default was chosen on the synthetic benchmark: deletion AUC 0.2921 (plain) against 0.2955
                (integrated), lower is better, at 3.5× lower cost.
            max_step: the first trial step α (``"nag"``: its fixed step η).
            armijo_c: the sufficient-decrease constant c.
            step_decay: factor applied to α after a rejected trial.
            min_step: once α is below this, the step is taken without a test.
            noise_std: standard deviation of the path noise, in model-input units (0 disables it).
            l1_schedule: divide λ1 by 10 at iteration ⌊T/2⌋ if the score has moved by at most 1e-3, and by 5 at
                ⌊T/1.25⌋ if by at most 1e-2 (only when T > 3); rescues runs whose area term blocks deletion.
            mask_init: initial mask, (s, s) or (B, 1, s, s) in [0, 1]; ones by default.
            score: ``"softmax"`` (the target's probability) or ``"logit"``.
            tol: freeze an image once an iteration changes no cell by ``tol`` or more; None runs all T.
            seed: seed of the noise generator (on the inputs' device); None draws one from the global RNG.
            internal_batch_size: model inputs per forward call (None: one call per pass); bounds memory to one
                chunk's autograd graph.
            return_mask: also return the (B, 1, s, s) mask M (1 = keep).
            show_progress: show a tqdm bar over the iterations.

        Returns:
            Attributions of the inputs' shape, dtype and device in [0, 1] (with the inputs' structure), and with
            ``return_mask`` the pair ``(attributions, mask)``.
        """
        return self._attribute(
            inputs,
            target,
            baselines,
            additional_forward_args,
            variant="igos",
            mask_size=mask_size,
            n_iterations=n_iterations,
            n_steps=n_steps,
            l1_coeff=l1_coeff,
            tv_coeff=tv_coeff,
            tv_beta=tv_beta,
            optimizer=optimizer,
            line_search=line_search,
            max_step=max_step,
            armijo_c=armijo_c,
            step_decay=step_decay,
            min_step=min_step,
            noise_std=noise_std,
            l1_schedule=l1_schedule,
            mask_init=mask_init,
            score=score,
            tol=tol,
            seed=seed,
            internal_batch_size=internal_batch_size,
            return_mask=return_mask,
            show_progress=show_progress,
        )


class IGOSPlusPlus(_IGOSBase):
    r"""iGOS++ (Khorram et al., ACM CHIL 2021, arXiv 2012.15783), and iGOS+ with ``single_mask=True``.

    iGOS++ optimises a deletion mask ``M_d`` and an insertion mask ``M_i`` together. With ``U_p = U(M_d)·U(M_i)``
    and integrated deletion and insertion terms

    ``Del(U) = (1/S) Σ_k f_c(x⊙(k/S)U + b⊙(1-(k/S)U) + ε_k)``,
    ``Ins(U) = -(1/S) Σ_k f_c(b⊙(k/S)U + x⊙(1-(k/S)U) + ε'_k)``,

    it descends on ``½·[Del(U_p) + Ins(U_p) + Del(U(M_d)) + Ins(U(M_i))] + λ1·mean|1-M_p| + λ2·BTV(x, M_p)``,
    ``M_p = M_d·M_i``, where the bilateral total variation lets the mask jump across image edges. The result
    is ``M_p``. iGOS+ uses one mask with ``Del(U(M)) + Ins(U(M))`` and no ½.

    Every argument of :meth:`IGOS.attribute` applies; the differences are the defaults ``n_iterations=20`` and
    ``l1_schedule=False`` and two more arguments, ``btv_sigma`` and ``single_mask``. The reference's
    high-resolution preset is ``mask_size=224, l1_coeff=10, n_iterations=20, n_steps=20``.

    Args:
        forward_func: the model, or any callable returning logits.
        input_normalization: ``(mean, std)`` per channel, used by ``baselines="black"``.

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

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: str | float | Tensor | tuple = "blur",
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        mask_size: int | tuple[int, int] = 28,
        n_iterations: int = 20,
        n_steps: int = 20,
        l1_coeff: float = 1.0,
        tv_coeff: float = 20.0,
        tv_beta: float = 2,
        optimizer: Optimizer = "line_search",
        line_search: LineSearch = DEFAULT_LINE_SEARCH,
        max_step: float = 1000.0,
        armijo_c: float = 1e-4,
        step_decay: float = 0.2,
        min_step: float = 1e-5,
        noise_std: float = 0.2,
        l1_schedule: bool = False,
        mask_init: Tensor | tuple[Tensor, Tensor] | None = None,
        score: Score = "softmax",
        tol: float | None = None,
        seed: int | None = None,
        internal_batch_size: int | None = None,
        return_mask: bool = False,
        show_progress: bool = False,
        btv_sigma: float = 0.01,
        single_mask: bool = False,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        r"""Optimise the masks of every image and return ``1 - U(M_p)`` (higher = more important).

        The arguments are those of :meth:`IGOS.attribute`, plus:

        Args:
            btv_sigma: σ of the bilateral weights ``exp(-(Δx)²/σ)``, in model-input units.
            single_mask: optimise one mask with one deletion and one insertion term (iGOS+).
            mask_init: one tensor initialises every mask; a pair initialises ``(M_d, M_i)``.

        Line-search mode ``"plain"`` evaluates each term at the end of its path without noise (one forward per
        term and trial); ``"integrated"`` the objective above with the gradient pass's noise. ``l1_schedule``
        watches the plain deletion score of ``M_p``. ``return_mask`` returns ``M_p``.
        """
        _check_flag("single_mask", single_mask)
        return self._attribute(
            inputs,
            target,
            baselines,
            additional_forward_args,
            variant="igos+" if single_mask else "igos++",
            mask_size=mask_size,
            n_iterations=n_iterations,
            n_steps=n_steps,
            l1_coeff=l1_coeff,
            tv_coeff=tv_coeff,
            tv_beta=tv_beta,
            optimizer=optimizer,
            line_search=line_search,
            max_step=max_step,
            armijo_c=armijo_c,
            step_decay=step_decay,
            min_step=min_step,
            noise_std=noise_std,
            l1_schedule=l1_schedule,
            mask_init=mask_init,
            score=score,
            tol=tol,
            seed=seed,
            internal_batch_size=internal_batch_size,
            return_mask=return_mask,
            show_progress=show_progress,
            btv_sigma=btv_sigma,
        )
