"""Locally adaptive kernel density estimation (Shimazaki & Shinomoto, J. Comput. Neurosci. 29:171–182, 2010),
batched over many series, and the peak count that ADVISE uses as a unit-relevance descriptor.

The estimator is configured as ADVISE configures ``ssvkernel``: ``M`` widths
serve both as kernel bandwidths and as Gaussian windows, and the stiffness ``γ`` of the variable bandwidth is
chosen by a golden-section search on the estimated L2 risk. Every step is one tensor program over all series
at once:

- the finest histogram of each series, by ``bucketize`` and one scatter;
- the local costs and their window-wise smoothing as matrix products: the reference smooths by FFT with a
  zero padding that depends on the width, i.e. a circular convolution, which is a fixed (L × L) matrix per width;
  it changes the result near the borders, so it is reproduced exactly, and one product smooths every series with
  every width (series × width) and every cost with every window (series × width × window);
- the cost of a stiffness ``γ`` with dense (series × L × L) kernels;
- the golden-section search in lockstep, with per-series brackets; a series that has converged is left out of
  the later cost evaluations.

Series whose working grid is coarser than the output grid (few distinct in-range samples) are grouped by grid
length; every group runs the same program. Series are processed in chunks that bound the memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_tensor, describe

__all__ = ["KDEResult", "adaptive_kde", "count_peaks"]

_GOLDEN = (math.sqrt(5.0) + 1.0) / 2.0
_MAX_GRID = 1000
# Elements of the largest temporary per chunk of series (float64: 8 bytes each).
_CHUNK_ELEMENTS = 1 << 21


@dataclass
class KDEResult:
    """The output of :func:`adaptive_kde` for ``S`` series on an output grid of ``Z`` points.

    Attributes:
        density: (S, Z) the density on the output grid, integrating to 1 on the working grid; zeros where the
            estimate failed.
        bandwidth: (S, Z) the local kernel bandwidths (the Nadaraya–Watson smoothed optimal widths).
        peaks: (S,) the number of strict interior local maxima of ``density`` (a plateau counts once), 0 where
            the estimate failed.
        valid: (S,) False where the estimate failed (no sample inside the grid's range, or a grid of fewer
            than 2 points).
        dropped: (S,) the fraction of samples outside the grid's range, which the estimator ignores.
        stiffness: (S,) the stiffness ``γ`` of the returned density (the last one evaluated), NaN where failed.
        grid_size: (S,) the length ``L`` of the working grid.
    """

    density: Tensor
    bandwidth: Tensor
    peaks: Tensor
    valid: Tensor
    dropped: Tensor
    stiffness: Tensor
    grid_size: Tensor


def _linspace(start: float, stop: float, num: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``numpy.linspace``, bit for bit: ``arange·step + start`` with the last point set to ``stop``; the
    histogram edges and widths then fall where the reference puts them."""
    if num == 1:
        return torch.tensor([start], dtype=dtype, device=device)
    step = (stop - start) / (num - 1)
    values = torch.arange(num, dtype=dtype, device=device) * step + start
    values[-1] = stop
    return values


def _logexp(values: Tensor) -> Tensor:
    return torch.where(values < 100, torch.log(1 + torch.exp(values.clamp_max(100))), values)


def _ilogexp(values: Tensor) -> Tensor:
    return torch.where(values < 100, torch.log(torch.exp(values.clamp_max(100)) - 1), values)


def _smoothing_matrices(length: int, sigmas: Tensor) -> Tensor:
    """The reference's FFT smoothing as matrices, (K, L, L): row ``s`` of matrix ``i`` is the response at every
    output point to a unit sample at ``s``. The reference zero-pads the rows to the next power of two
    ``n ≥ L + 3σ`` and multiplies by ``exp(−(2πσf)²/2)`` in the frequency domain: a circular convolution with the
    kernel ``irfft(exp(−(2πσf)²/2), n)``, which is what these matrices hold (the padding matters near the
    borders, so it is kept). One matrix product then smooths a whole batch of rows with every width."""
    matrices = sigmas.new_empty((sigmas.numel(), length, length))
    offsets = torch.arange(length, device=sigmas.device)
    lag = offsets[None, :] - offsets[:, None]  # k − s
    for i, sigma in enumerate(sigmas.tolist()):
        size = int(2 ** math.ceil(math.log2(length + 3 * sigma)))
        freq = torch.arange(size // 2 + 1, dtype=sigmas.dtype, device=sigmas.device) / size
        kernel = torch.fft.irfft(torch.exp(-0.5 * (sigma * 2 * math.pi * freq).square()), n=size)
        matrices[i] = kernel[lag % size]
    return matrices


class _Problem:
    """The fixed part of the estimate of a chunk of series on one working grid ``t`` (L,)."""

    def __init__(self, y_hist: Tensor, t: Tensor, dt: float, span: float, num_widths: int) -> None:
        self.y_hist = y_hist  # (S, L)
        self.t = t
        self.dt = dt
        self.mass = (y_hist * dt).sum(1)  # N, (S,)
        low = _ilogexp(torch.tensor(5 * dt, dtype=t.dtype))
        high = _ilogexp(torch.tensor(span, dtype=t.dtype))
        self.widths = _logexp(
            _linspace(float(low), float(high), num_widths, dtype=t.dtype, device=t.device)
        )  # W, (M,)
        count, length = y_hist.shape
        matrices = _smoothing_matrices(length, self.widths / dt)  # (M, L_s, L_k)
        # Local costs c_j of every bandwidth w_j, (S, M, L).
        smooth = (y_hist @ matrices.permute(1, 0, 2).reshape(length, -1)).view(count, num_widths, length)
        hist = y_hist.unsqueeze(1)
        costs = smooth.square() - 2 * smooth * hist + 2 / math.sqrt(2 * math.pi) / self.widths[:, None] * hist
        # Every cost c_j smoothed by every window W_i, laid out (S, M_i, L, M_j); the best bandwidth per window
        # and point (argmin: the first index on ties).
        windowed = matrices.transpose(1, 2).reshape(-1, length) @ costs.transpose(1, 2)
        best = windowed.view(count, num_widths, length, num_widths).argmin(-1)  # (S, M_i, L)
        self.ratios = self.widths[best] / self.widths[:, None]  # optw_i(t) / W_i
        self.ratio_max = self.ratios.amax(1)  # (S, L)
        self.ratio_min = self.ratios.amin(1)
        self.distance2 = (t[:, None] - t[None, :]).square()  # (L, L)
        self.widths_min = float(self.widths.min())
        self.widths_max = float(self.widths.max())
        # A point s whose local width is γ·W_j (not clamped) has the Nadaraya–Watson kernel exp(−(t−s)²/2W_j²),
        # whatever γ: these M kernels, and the same divided by W_j, laid out (M·L_s, 2·L_t), turn both sums of
        # the smoothing into one matrix product per evaluation.
        kernels = torch.exp(-0.5 * self.distance2 / self.widths.view(-1, 1, 1).square())  # (M, L_s, L_t)
        self.tables = torch.cat([kernels, kernels / self.widths.view(-1, 1, 1)], dim=2).reshape(
            num_widths * length, 2 * length
        )
        self.weighted_hist = y_hist * dt
        self.buffer = y_hist.new_empty((count, length, length))

    def cost(self, gamma: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``C(γ)``, the density and the local bandwidths of the series ``index`` (all when None) at their
        stiffness ``gamma``: (n,), (n, L), (n, L)."""
        pick = (lambda value: value) if index is None else (lambda value: value[index])
        ratios, y_hist, mass = pick(self.ratios), pick(self.y_hist), pick(self.mass)
        ratio_max, ratio_min = pick(self.ratio_max), pick(self.ratio_min)
        widths = self.widths
        count, length = y_hist.shape
        g = gamma[:, None]
        # The largest window index whose ratio optw_i / W_i reaches γ (−1 if none).
        position = torch.arange(widths.numel(), device=ratios.device)[None, :, None]
        last = torch.where(ratios >= g[..., None], position, -1).amax(1)  # (n, L)
        narrowest = g > ratio_max  # local width W_min
        widest = g < ratio_min  # local width W_max
        local = g * widths.take(last.clamp_min(0))
        local = torch.where(narrowest, self.widths_min, local)
        local = torch.where(widest, self.widths_max, local)
        # Nadaraya–Watson smoothing of the local widths with Gaussians of width w(s)/γ: with
        # E_ts = exp(−(t−s)²γ²/2w(s)²), Σ_s w(s) G_ts / Σ_s G_ts = γ Σ_s E_ts / Σ_s E_ts γ/w(s).
        # Unclamped points (w(s) = γ·W_j) use the precomputed kernels: one-hot (n, M·L) times the tables.
        free = ~(narrowest | widest)
        choice = torch.zeros((count, widths.numel(), length), dtype=y_hist.dtype, device=y_hist.device)
        choice.scatter_(1, last.clamp_min(0).unsqueeze(1), free.to(y_hist.dtype).unsqueeze(1))
        sums = choice.view(count, -1) @ self.tables  # (n, 2L): Σ_s E_ts and Σ_s E_ts γ/w(s)
        total, weighted = sums[:, :length], sums[:, length:]
        clamped = (~free).any(1).nonzero()[:, 0]
        if clamped.numel():
            # points clamped to W_min or W_max: inverse width γ/W, a kernel per series (dense, only for them)
            inverse = torch.where(narrowest[clamped], 1 / self.widths_min, 1 / self.widths_max) * g[clamped]
            inverse = torch.where(free[clamped], 0.0, inverse)  # free points are counted above
            kernel = torch.mul(
                self.distance2, (-0.5 * inverse.square()).unsqueeze(1), out=self.buffer[: clamped.numel()]
            )
            kernel.exp_()
            # one product gives Σ_s over the clamped points of E_ts and of E_ts·γ/w(s)
            weights = torch.stack([(~free[clamped]).to(kernel.dtype), inverse], dim=2)
            sums = torch.bmm(kernel, weights)
            total = total.index_add(0, clamped, sums[..., 0])
            weighted = weighted.index_add(0, clamped, sums[..., 1])
        smoothed = g * total / weighted
        # A weighted mean of equal widths is that width; said exactly, the cost is exactly flat in γ where every
        # local width is clamped to max W, and the search breaks such ties the reference's way (f1 < f2 false).
        uniform = (local == local[:, :1]).all(1, keepdim=True)
        smoothed = torch.where(uniform, local, smoothed)
        # Balloon estimator with the smoothed width at the evaluation point: Σ_s h(s)·dt·G(t − s; w̄(t)).
        kernel = torch.mul(self.distance2, (-0.5 / smoothed.square()).unsqueeze(2), out=self.buffer[:count])
        kernel.exp_()
        density = torch.bmm(kernel, pick(self.weighted_hist).unsqueeze(2))[..., 0] / (
            math.sqrt(2 * math.pi) * smoothed
        )
        density = density * (mass / (density * self.dt).sum(1))[:, None]
        terms = density.square() - 2 * density * y_hist + 2 / math.sqrt(2 * math.pi) / smoothed * y_hist
        return (terms * self.dt).sum(1), density, smoothed


def _golden_section(
    problem: _Problem, tol: float, max_iter: int, low: float = 1e-12, high: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's golden-section search on ``γ ∈ [low, high]`` in lockstep over the series. Returns the
    **last evaluated** density (normalised), local widths and ``γ`` of each series, as the reference does."""
    count, length = problem.y_hist.shape
    like = problem.y_hist
    a = like.new_full((count,), low)
    b = like.new_full((count,), high)
    c1 = (_GOLDEN - 1) * a + (2 - _GOLDEN) * b
    c2 = (2 - _GOLDEN) * a + (_GOLDEN - 1) * b
    f1 = problem.cost(c1)[0]
    f2 = problem.cost(c2)[0]
    density = like.new_zeros((count, length))
    bandwidth = like.new_zeros((count, length))
    gamma = like.new_full((count,), float("nan"))
    active = torch.ones(count, dtype=torch.bool, device=like.device)
    for _ in range(max_iter):
        active &= (b - a).abs() > tol * (c1.abs() + c2.abs())
        index = active.nonzero()[:, 0]
        if index.numel() == 0:
            break
        a_i, b_i, c1_i, c2_i, f1_i, f2_i = (v[index] for v in (a, b, c1, c2, f1, f2))
        left = f1_i < f2_i
        # left: [a, c2] is kept and a new c1 evaluated; right: [c1, b] is kept and a new c2 evaluated
        new_a = torch.where(left, a_i, c1_i)
        new_b = torch.where(left, c2_i, b_i)
        new_c1 = torch.where(left, (_GOLDEN - 1) * new_a + (2 - _GOLDEN) * new_b, c2_i)
        new_c2 = torch.where(left, c1_i, (2 - _GOLDEN) * new_a + (_GOLDEN - 1) * new_b)
        trial = torch.where(left, new_c1, new_c2)
        value, trial_density, trial_bandwidth = problem.cost(trial, index)
        a[index], b[index], c1[index], c2[index] = new_a, new_b, new_c1, new_c2
        f1[index] = torch.where(left, value, f2_i)
        f2[index] = torch.where(left, f1_i, value)
        density[index] = trial_density / (trial_density * problem.dt).sum(1, keepdim=True)
        bandwidth[index] = trial_bandwidth
        gamma[index] = trial
    return density, bandwidth, gamma


def _interp(values: Tensor, grid: Tensor, points: Tensor) -> Tensor:
    """``numpy.interp`` of the rows of ``values`` (S, L) given on the increasing ``grid`` (L,) at ``points``."""
    if grid.numel() == points.numel() and bool((grid == points).all()):
        return values
    right = torch.searchsorted(grid, points, right=True).clamp(1, grid.numel() - 1)
    left = right - 1
    fraction = ((points - grid[left]) / (grid[right] - grid[left])).clamp(0, 1)
    return values[:, left] * (1 - fraction) + values[:, right] * fraction


def count_peaks(values: Tensor) -> Tensor:
    """The number of strict interior local maxima along the last dimension; a plateau counts once when both
    of its neighbours are lower, and the endpoints never count (``scipy.signal.find_peaks`` with defaults,
    MATLAB ``findpeaks`` without options).

    Example:
        >>> import torch
        >>> count_peaks(torch.tensor([[0.0, 1.0, 0.0, 2.0, 2.0, 1.0], [3.0, 2.0, 1.0, 1.0, 1.0, 2.0]]))
        tensor([2, 0])
    """
    check_tensor("values", values, finite=False)
    if values.ndim == 0:
        raise ValueError(f"`values` must have at least one dimension, got {describe(values)}")
    if values.shape[-1] < 3:
        return torch.zeros(values.shape[:-1], dtype=torch.long, device=values.device)
    step = torch.sign(values[..., 1:] - values[..., :-1])
    # For each step, the sign of the last non-zero step at or before it (0 if none): plateaus are skipped.
    position = torch.arange(step.shape[-1], device=values.device).expand_as(step)
    last = torch.where(step != 0, position, -1).cummax(-1).values
    previous = torch.where(last >= 0, step.gather(-1, last.clamp_min(0)), torch.zeros_like(step))
    # A peak ends where a fall follows a rise (with only flat steps in between).
    falls = step[..., 1:] < 0
    rose = previous[..., :-1] > 0
    return (falls & rose).sum(-1)


def _chunk_size(length: int, num_widths: int) -> int:
    per_series = max(length * length * 2, num_widths * num_widths * length)
    return max(1, _CHUNK_ELEMENTS // per_series)


def adaptive_kde(
    samples: Tensor,
    grid: Tensor | int | None = None,
    num_widths: int = 10,
    *,
    tol: float = 1e-5,
    max_iter: int = 30,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
) -> KDEResult:
    """Locally adaptive kernel density estimates of many series at once (Shimazaki–Shinomoto ``ssvkernel``
    with a Gauss window), and their peak counts.

    For each series (a row of ``samples``): only the samples inside ``[min grid, max grid]`` are used; the
    working grid is the output grid, or a coarser ``linspace`` when the smallest gap between distinct samples
    exceeds the output grid's step; ``num_widths`` widths spaced on a softplus scale between ``5·dt`` and the
    grid's span serve as bandwidths and as windows; the stiffness of the variable bandwidth is optimised by a
    golden-section search on ``[1e-12, 1]`` (``tol``, at most ``max_iter`` steps), and the last evaluated
    density is returned, normalised and linearly interpolated onto the output grid.

    Args:
        samples: (S, n) series of samples, or (n,) for one series.
        grid: the output grid (G,), increasing with at least 2 points, or its length for ``linspace(0, 1, G)``;
            None means ``linspace(0, 1, n)`` (ADVISE's choice).
        num_widths: ``M``, the number of bandwidths and windows (10 in ADVISE).
        tol, max_iter: stopping rule of the golden-section search.
        dtype: the computation's floating dtype (float64 by default).
        chunk_size: series per chunk (memory bound); None picks it from the grid length.

    Returns:
        A :class:`KDEResult` (the series dimension is kept for a 1-D input too: S = 1).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> two_modes = torch.cat([0.25 + 0.04 * torch.randn(100), 0.75 + 0.04 * torch.randn(100)]).clamp(0, 1)
        >>> result = adaptive_kde(two_modes)
        >>> result.density.shape, result.peaks.tolist()
        (torch.Size([1, 200]), [2])
    """
    check_tensor("samples", samples, ndim=(1, 2))
    if not samples.is_floating_point():
        samples = samples.to(dtype)
    series = samples.unsqueeze(0) if samples.ndim == 1 else samples
    count, n = series.shape
    device = series.device
    if isinstance(num_widths, bool) or not isinstance(num_widths, int) or num_widths < 2:
        raise ValueError(f"`num_widths` must be an int ≥ 2, got {num_widths!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"`tol` must be a positive number, got {tol!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be None or a positive int, got {chunk_size!r}")
    if grid is None or isinstance(grid, int):
        points = n if grid is None else grid
        if isinstance(points, bool) or points < 1:
            raise ValueError(f"`grid` as a length must be a positive int, got {grid!r}")
        tin = _linspace(0.0, 1.0, points, dtype=dtype, device=device)
    else:
        check_tensor("grid", grid, ndim=1)
        tin = grid.to(device=device, dtype=dtype)
        if tin.numel() >= 2 and not bool((tin[1:] > tin[:-1]).all()):
            raise ValueError(f"`grid` must be strictly increasing, got {describe(grid)}")
    size = tin.numel()
    x = series.to(dtype)

    density = x.new_zeros((count, size))
    bandwidth = x.new_zeros((count, size))
    stiffness = x.new_full((count,), float("nan"))
    grid_size = torch.zeros(count, dtype=torch.long, device=device)
    low, high = float(tin[0]), float(tin[-1])
    inside = (x >= low) & (x <= high)
    dropped = 1 - inside.to(dtype).mean(1) if n else x.new_zeros(count)
    valid = inside.any(1) if n else torch.zeros(count, dtype=torch.bool, device=device)
    if size < 2:
        valid = torch.zeros_like(valid)
    if not bool(valid.any()):
        peaks = torch.zeros(count, dtype=torch.long, device=device)
        return KDEResult(density, bandwidth, peaks, valid, dropped, stiffness, grid_size)

    span = high - low
    step = float(torch.diff(tin).min())
    # Smallest positive gap between in-range samples (inf with fewer than 2 distinct values).
    ordered = torch.where(inside, x, torch.inf).sort(1).values
    gaps = torch.diff(ordered, dim=1)
    gaps = torch.where(torch.isfinite(gaps) & (gaps > 0), gaps, torch.inf)
    smallest = gaps.amin(1) if n > 1 else x.new_full((count,), torch.inf)
    coarse = torch.isfinite(smallest) & (smallest > step)
    lengths = torch.full((count,), size, dtype=torch.long, device=device)
    if bool(coarse.any()):
        coarse_lengths = torch.ceil(span / smallest[coarse]).clamp_max(_MAX_GRID).long()
        lengths[coarse] = coarse_lengths
    valid = valid & (lengths >= 2)
    grid_size = torch.where(valid, lengths, 0)

    for length in sorted(set(lengths[valid].tolist())):
        members = (valid & (lengths == length)).nonzero()[:, 0]
        t = tin if length == size else _linspace(low, high, length, dtype=dtype, device=device)
        dt = float(torch.diff(t).min())
        edges = torch.cat([t, t[-1:] + dt]) - dt / 2
        chunk = chunk_size or _chunk_size(length, num_widths)
        for begin in range(0, members.numel(), chunk):
            index = members[begin : begin + chunk]
            values, keep = x[index], inside[index]
            # numpy.histogram's bins: [e_j, e_j+1), the last one closed.
            bins = (torch.bucketize(values, edges, right=True) - 1).clamp(0, length - 1)
            counts = torch.zeros((index.numel(), length), dtype=dtype, device=device)
            counts.scatter_add_(1, bins, keep.to(dtype))
            problem = _Problem(counts / dt, t, dt, span, num_widths)
            chunk_density, chunk_bandwidth, chunk_gamma = _golden_section(problem, tol, max_iter)
            density[index] = _interp(chunk_density, t, tin)
            bandwidth[index] = _interp(chunk_bandwidth, t, tin)
            stiffness[index] = chunk_gamma
    peaks = torch.where(valid, count_peaks(density), 0)
    return KDEResult(density, bandwidth, peaks, valid, dropped, stiffness, grid_size)
