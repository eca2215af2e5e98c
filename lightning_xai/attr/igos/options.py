"""The settings of I-GOS and iGOS++ as frozen dataclasses, each field checked once when the object is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from torch import Tensor

from ..._checks import (
    check_flag,
    check_in_choices,
    check_int,
    check_internal_batch_size,
    check_number,
    check_tensor,
    describe,
)
from ..._options import Options
from ...models.scoring import Score

Optimizer = Literal["line_search", "nag"]
LineSearch = Literal["integrated", "plain"]
Quadrature = Literal["gauss_legendre", "riemann"]

#: The default Armijo objective (``"plain"``: one noise-free forward per trial), chosen by
#: ``benchmarks/bench_igos.py``: its deletion AUC is within the benchmark's 0.01 margin of ``"integrated"`` at a
#: fraction of the cost (the figures are in BENCHMARKS.md).
DEFAULT_LINE_SEARCH: LineSearch = "plain"


def _mask_size(value: object) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in pair)
    ):
        raise ValueError(f"`mask_size` must be an int >= 2 or a (height, width) pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class IGOSOptions(Options):
    r"""The settings of :class:`~lightning_xai.attr.IGOS`; every field is checked when the object is built.

    Pass one as ``attribute(x, options=...)``, or name fields as keyword arguments of ``attribute`` (they replace
    the fields of ``options``, or of the defaults).

    Attributes:
        mask_size: side ``s`` of the mask (or ``(h, w)``; stored as a pair); the references use 28.
        n_iterations: optimisation steps T.
        n_steps: points S on the integration path.
        quadrature: where the S points lie and how they are weighted. ``"gauss_legendre"`` (default): the
            S-point Gauss–Legendre rule on [0, 1], exact for polynomials of degree 2S − 1, so 5 points do
            what the references' 20 do. ``"riemann"``: the references' right sum at k/S, k = 1…S, weights 1/S.
        l1_coeff: weight λ1 of the area term ``mean|1 - M|``.
        tv_coeff: weight λ2 of the total variation ``mean|ΔM|^β`` (both directions).
        tv_beta: the exponent β.
        optimizer: ``"line_search"`` (Armijo backtracking) or ``"nag"`` (Nesterov momentum with the fixed step
            ``max_step``; no line-search forwards).
        line_search: the Armijo objective. ``"plain"`` (default): the noise-free ``f_c(Φ(x, b, M)) + R``, one
            forward per trial (the I-GOS reference). ``"integrated"``: the integrated loss that the gradient
            belongs to, with the same noise as the gradient pass, S forwards per trial.
        max_step: the first trial step α (``"nag"``: its fixed step η).
        warm_start: start each image's backtracking at its last accepted step divided by ``step_decay``
            (at most ``max_step``) instead of at ``max_step`` every iteration: the same accepted steps after
            one or two trials instead of five to ten. False is the references' search.
        armijo_c: the sufficient-decrease constant c.
        step_decay: factor applied to α after a rejected trial.
        min_step: once α is below this, the step is taken without a test.
        noise_std: standard deviation of the path noise, in model-input units (0 disables it).
        l1_schedule: divide λ1 by 10 at iteration ⌊T/2⌋ if the score has moved by at most 1e-3, and by 5 at
            ⌊T/1.25⌋ if by at most 1e-2 (only when T > 3); rescues runs whose area term blocks deletion.
        score: ``"softmax"`` (the target's probability) or ``"logit"``.
        tol: freeze an image once an iteration changes no cell by ``tol`` or more; None runs all T.
        seed: seed of the noise generator (on the inputs' device); None draws one from the global RNG.
        internal_batch_size: model inputs per forward call (None: one call per pass); bounds memory to one
            chunk's autograd graph.

    Example:
        >>> from lightning_xai.attr import IGOSOptions
        >>> options = IGOSOptions(mask_size=14, n_iterations=5)
        >>> options.mask_size, options.replace(seed=0).seed
        ((14, 14), 0)
    """

    mask_size: int | tuple[int, int] = 28
    n_iterations: int = 15
    n_steps: int = 5
    quadrature: Quadrature = "gauss_legendre"
    l1_coeff: float = 1.0
    tv_coeff: float = 20.0
    tv_beta: float = 2.0
    optimizer: Optimizer = "line_search"
    line_search: LineSearch = DEFAULT_LINE_SEARCH
    max_step: float = 1000.0
    warm_start: bool = True
    armijo_c: float = 1e-4
    step_decay: float = 0.2
    min_step: float = 1e-5
    noise_std: float = 0.2
    l1_schedule: bool = True
    score: Score = "softmax"
    tol: float | None = None
    seed: int | None = None
    internal_batch_size: int | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "mask_size", _mask_size(self.mask_size))
        check_int("n_iterations", self.n_iterations, 1)
        check_int("n_steps", self.n_steps, 1)
        numbers: dict[str, dict[str, Any]] = {
            "l1_coeff": {},
            "tv_coeff": {},
            "tv_beta": {"strict": True},
            "max_step": {"strict": True},
            "armijo_c": {},
            "step_decay": {"strict": True, "high": 1.0},
            "min_step": {"strict": True},
            "noise_std": {},
        }
        for name, bounds in numbers.items():
            set_field(self, name, check_number(name, getattr(self, name), **bounds))
        check_in_choices("optimizer", self.optimizer, ("line_search", "nag"))
        check_in_choices("line_search", self.line_search, ("integrated", "plain"))
        check_in_choices("quadrature", self.quadrature, ("gauss_legendre", "riemann"))
        check_flag("warm_start", self.warm_start)
        check_flag("l1_schedule", self.l1_schedule)
        check_in_choices("score", self.score, ("softmax", "logit"))
        if self.tol is not None:
            set_field(self, "tol", check_number("tol", self.tol, strict=True))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"`seed` must be None or an int, got {describe(self.seed)}")
        check_internal_batch_size(self.internal_batch_size)

    #: The fields that :meth:`reference` sets: the references' 20-point right Riemann sum and the
    #: backtracking from ``max_step`` at every iteration.
    reference_fields: ClassVar[dict[str, Any]] = {"n_steps": 20, "quadrature": "riemann", "warm_start": False}

    @classmethod
    def reference(cls, **overrides: Any) -> Self:
        """The settings of the authors' code (about three times the cost of the defaults), with ``overrides``.

        Example:
            >>> from lightning_xai.attr import IGOSOptions
            >>> IGOSOptions.reference().n_steps, IGOSOptions.reference(n_iterations=5).quadrature
            (20, 'riemann')
        """
        return cls(**{**cls.reference_fields, **overrides})


@dataclass(frozen=True)
class IGOSPlusPlusOptions(IGOSOptions):
    """The settings of :class:`~lightning_xai.attr.IGOSPlusPlus`: those of :class:`IGOSOptions` with the
    defaults ``n_iterations=20`` and ``l1_schedule=False``, plus:

    Attributes:
        btv_sigma: σ of the bilateral weights ``exp(-(Δx)²/σ)``, in model-input units.
        single_mask: optimise one mask with one deletion and one insertion term (iGOS+).

    The reference's high-resolution preset is ``mask_size=224, l1_coeff=10, n_iterations=20, n_steps=20``.
    """

    n_iterations: int = 20
    l1_schedule: bool = False
    reference_fields: ClassVar[dict[str, Any]] = {**IGOSOptions.reference_fields, "line_search": "integrated"}
    btv_sigma: float = 0.01
    single_mask: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "btv_sigma", check_number("btv_sigma", self.btv_sigma, strict=True))
        check_flag("single_mask", self.single_mask)


def initial_mask(value: object, batch: int, size: tuple[int, int], like: Tensor, name: str) -> Tensor:
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
