"""The I-GOS / iGOS++ descent: integrated gradients of the objective, Armijo backtracking or Nesterov momentum,
per-image step sizes, L1 schedule and convergence."""

from __future__ import annotations

import numpy
import torch
from torch import Tensor
from tqdm import tqdm

from .objective import _Objective
from .options import IGOSOptions

# The L1 schedule of the I-GOS reference: (iteration as a fraction divisor of T, |p0 - p| threshold, factor).
_L1_SCHEDULE = ((2.0, 1e-3, 10.0), (1.25, 1e-2, 5.0))


def optimise(
    objective: _Objective,
    masks: list[Tensor],
    clean: Tensor,
    generator: torch.Generator,
    options: IGOSOptions,
    *,
    desc: str,
    show_progress: bool,
    trace: list[dict[str, Tensor]] | None = None,
) -> list[Tensor]:
    """Run the optimisation of every image's ``masks`` in place and return them.

    ``clean`` holds the clean scores (for the L1 schedule); ``trace``, when a list, receives one record per
    iteration (masks, gradients, losses, step sizes)."""
    n_iterations, n_steps, noise_std = options.n_iterations, options.n_steps, options.noise_std
    max_step, optimizer, tol = options.max_step, options.optimizer, options.tol
    x = objective.inputs
    batch = x.shape[0]
    points = path_points(n_steps, options.quadrature, x)
    endpoint = (x.new_ones(1), x.new_ones(1))
    # the plain data value of each image's current masks where the last accepted trial measured it (NaN:
    # unknown), so the plain line search spends no forward on a loss it already knows
    known = x.new_full((batch,), float("nan"))
    # each image's last accepted step, where the next backtracking starts (warm_start)
    last_step = x.new_full((batch,), max_step)
    converged = torch.zeros(batch, dtype=torch.bool, device=x.device)
    previous_theta = [mask.clone() for mask in masks] if optimizer == "nag" else None
    schedule = (
        {int(n_iterations / divisor): (threshold, factor) for divisor, threshold, factor in _L1_SCHEDULE}
        if options.l1_schedule and n_iterations > 3
        else {}
    )
    for iteration in tqdm(range(n_iterations), desc=desc, disable=not show_progress):
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
            if options.line_search == "integrated":
                loss = data + regulariser
                trial_points, trial_noise = points, noise
            else:
                plain = known[active]
                missing = plain.isnan().nonzero()[:, 0]
                if missing.numel():
                    values = objective.data(
                        [m[missing] for m in current], active[missing], endpoint, None, False
                    )
                    plain[missing] = values[0]
                loss = plain + regulariser
                trial_points, trial_noise = endpoint, None
            start = (
                (last_step[active] / options.step_decay).clamp(max=max_step) if options.warm_start else None
            )
            updated, step, trial_data = armijo(
                objective, current, grads, loss, active, trial_points, trial_noise, options, record, start
            )
            last_step[active] = step
            known[active] = trial_data if options.line_search == "plain" else float("nan")
            record.update(loss=loss, step=step)
        if trace is not None:
            trace.append(
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


def armijo(
    objective: _Objective,
    current: list[Tensor],
    grads: list[Tensor],
    loss: Tensor,
    images: Tensor,
    points: Tensor,
    noise: Tensor | None,
    options: IGOSOptions,
    record: dict[str, Tensor],
    start: Tensor | None = None,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Backtracking from ``start`` (per image; default ``max_step``) by ``step_decay`` until
    ``L(M') <= L(M) - c·α·‖g‖²``; once α falls below ``min_step`` the step is taken untested. Only images
    still searching are evaluated at each trial. Returns the new masks, the steps and the data part of each
    accepted trial (NaN where the step was taken untested)."""
    armijo_c, step_decay, min_step = options.armijo_c, options.step_decay, options.min_step
    count = images.numel()
    step = loss.new_full((count,), options.max_step) if start is None else start.clone()
    trial_data = loss.new_full((count,), float("nan"))
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
        data = objective.data(trial, images[todo], points, noise, need_grad=False)[0]
        value = objective.regulariser(trial, images[todo], need_grad=False)[0] + data
        ok = value <= loss[todo] - armijo_c * step[todo] * grad_norm2[todo]
        done = todo[ok]
        trial_data[done] = data[ok]
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
    return updated, step, trial_data


def path_points(n_steps: int, quadrature: str, like: Tensor) -> tuple[Tensor, Tensor]:
    """The fractions t_k of the integration path and their weights w_k (summing to 1), on ``like``'s device
    and dtype: Gauss–Legendre nodes mapped to [0, 1], or the right Riemann sum k/S with weights 1/S."""
    if quadrature == "riemann":
        nodes = torch.arange(1, n_steps + 1, dtype=torch.float64) / n_steps
        weights = torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    else:
        roots, gauss = numpy.polynomial.legendre.leggauss(n_steps)
        nodes, weights = torch.from_numpy((roots + 1) / 2), torch.from_numpy(gauss / 2)
    return nodes.to(like), weights.to(like)
