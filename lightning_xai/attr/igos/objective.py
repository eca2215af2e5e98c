"""The batched I-GOS / iGOS++ objective: data terms along integration paths plus the regularisers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ...explain import upsample_mask
from ...models import LogitsForward, check_logits
from ...models.scoring import Score, chunk_bounds, scores_from_logits, select_forward_args
from .regularisers import _area, _bilateral_tv, _edge_weights, _total_variation

_DELETION, _INSERTION = 1.0, -1.0


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
        points: tuple[Tensor, Tensor],
        noise: Tensor | None,
        need_grad: bool,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Data part of the objective of ``images`` (n,) with ``masks`` (n, 1, s, s) each, and its gradient.

        ``points`` are the path fractions t_k (P,) and their quadrature weights w_k (P,) (the plain objective
        uses ``([1.], [1.])``); ``noise`` is
        (terms, P, C, H, W) or None. Rows (image, term, point) go through the model in chunks; each chunk
        rebuilds its composed inputs from fresh leaves, so memory is bounded by one chunk's graph.
        """
        nodes, point_weights = points
        n_points = nodes.numel()
        per_image = self.n_terms * n_points
        batch = self.inputs.shape[0]
        device = self.inputs.device
        loss = self.inputs.new_zeros(images.numel())
        grads = [torch.zeros_like(mask) for mask in masks] if need_grad else None
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
                paths = self._term_masks(leaves)[local, term] * nodes[point].view(-1, 1, 1, 1)
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
                    scores.gather(1, self.target.index_select(0, sample)[:, None])[:, 0]
                    * self.term_weights[term]
                    * point_weights[point]
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
