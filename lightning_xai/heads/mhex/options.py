"""The injection settings of MHEX as one frozen dataclass, shared by ``inject_mhex``, the callback and the
module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..._checks import check_flag, check_in_choices, check_int, check_number
from ..._options import Options
from .gates import GateCalibration
from .heads import GateMode

__all__ = ["MHEXOptions"]

_DEFAULT_B0 = {"unit": 3.0, "none": 6.0}


@dataclass(frozen=True)
class MHEXOptions(Options):
    """Where and how :func:`~lightning_xai.heads.inject_mhex` attaches the MHEX branches; checked once.

    Attributes:
        stages: ``"auto"`` (the last four ``feature_info`` stages of a CNN; four evenly spaced blocks ending at
            the last for a ViT or an encoder), or stage indices / names of :func:`~lightning_xai.models.list_stages`
            (kept as a tuple).
        num_classes: K of the heads; read from the model when None.
        gate_mode: ``"in_path"`` (the backbone sees gated features) or ``"side_branch"`` (only the heads do;
            the main logits never change).
        gate_calibration: ``"unit"`` (``m = σ(z)/σ(b0)``, exactly 1 at injection) or ``"none"`` (``σ(z)``).
        b0: initial gate bias; None resolves to 3.0 for ``"unit"`` and 6.0 for ``"none"``.
        gate_rank: rank r of ``W_g = U V`` (2Cr parameters instead of C²); None or ``r >= C`` is a full matrix.
        refine: learn ``W1`` (True), fix it to the identity (False), or ``"auto"``: learn it on stages with at
            most ``refine_max_channels`` channels.
        refine_max_channels: the channel limit of ``refine="auto"``.
        detach_heads: stop head gradients at the stage output (the backbone then learns from the main loss only).
        special_token_ids: token ids whose saliency is 0 (e.g. ``tokenizer.all_special_ids``); None: the
            ``pad/bos/eos/cls/sep/mask`` ids of the model's config.
    """

    stages: str | tuple[int | str, ...] = "auto"
    num_classes: int | None = None
    gate_mode: GateMode = "in_path"
    gate_calibration: GateCalibration = "unit"
    b0: float | None = None
    gate_rank: int | None = 32
    refine: bool | Literal["auto"] = "auto"
    refine_max_channels: int = 256
    detach_heads: bool = False
    special_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        if isinstance(self.stages, str):
            if self.stages != "auto":
                raise ValueError(
                    f"`stages` must be 'auto' or a list of stage indices or names, got {self.stages!r}"
                )
        else:
            set_field(self, "stages", tuple(self.stages))
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)
        check_in_choices("gate_mode", self.gate_mode, ("in_path", "side_branch"))
        check_in_choices("gate_calibration", self.gate_calibration, ("unit", "none"))
        b0 = _DEFAULT_B0[self.gate_calibration] if self.b0 is None else self.b0
        set_field(self, "b0", check_number("b0", b0, low=-float("inf"), want="a finite number"))
        if self.gate_rank is not None:
            check_int("gate_rank", self.gate_rank, 1)
        if not isinstance(self.refine, bool) and self.refine != "auto":
            raise ValueError(f"`refine` must be True, False or 'auto', got {self.refine!r}")
        check_int("refine_max_channels", self.refine_max_channels, 1)
        check_flag("detach_heads", self.detach_heads)
        if self.special_token_ids is not None:
            set_field(self, "special_token_ids", tuple(int(i) for i in self.special_token_ids))

    def to_config(self) -> dict[str, Any]:
        """The fields recorded in the heads' ``config`` and in checkpoints (``special_token_ids`` is not)."""
        config = self.to_dict()
        config.pop("special_token_ids")
        config["stages"] = self.stages if isinstance(self.stages, str) else list(self.stages)
        return config
