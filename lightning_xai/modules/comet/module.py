"""COMET (Comprehensive Attribution with a feature detector) as a LightningModule.

A selector draws a mask, a predictor classifies the selected image, and a frozen detector trained on full images
penalises the selector when class evidence is left in the masked-out part. See ``docs/methods/comet.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..._checks import check_in_choices, check_number, check_positive, describe
from ...attr.comet import selector_mask
from ...data.batch import Batch, split_batch
from ...explain import Normalization
from ...heads.mhex import infer_num_classes
from ...models import build_model, check_logits, logits_of, safe_load
from .networks import build_selector

__all__ = ["ComprehensiveAttribution"]

FillSpec = Literal["mean", "black"] | float | Sequence[float] | Tensor
DetectorPenalty = Literal["hinge", "unbounded"]
HingeReduction = Literal["batch", "sample"]
DetectorMode = Literal["eval", "train_bn"]


def _cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy computed in at least float32 (half-precision logits are upcast)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, target, reduction=reduction)


class ComprehensiveAttribution(L.LightningModule):
    """COMET: selector, predictor and a frozen detector that penalises evidence left outside the mask.

    With ``m = σ(S(x))`` (B, 1, H, W), the fill value ``q``, ``x_s = m ⊙ x + (1 − m) ⊙ q`` (what the predictor
    sees) and ``x_{1−s} = (1 − m) ⊙ x + m ⊙ q`` (what the detector sees)::

        L_P   = CE(f_P(x_s), y)                  L_D = CE(f_D(x_{1−s}), y)          (batch means)
        R     = mean_b max(0, mean_hw m_b − τ)                                       (area hinge)
        L_sel = α L_P + β max(0, L_P − L_D + δ) + λ R                                 (detector hinge)

    **Gradient routing.** The predictor learns from ``CE(f_P(x_s.detach()), y)`` only; the selector from
    ``L_sel``, through the predictor (evaluated a second time with detached parameters and copied buffers, so
    it takes no gradient and its BatchNorm statistics move once per step) and through the detector. One
    ``manual_backward`` of the sum gives exactly these gradients; two AdamW optimisers step once per batch.
    Predictors with dropout draw different noise in the two evaluations.

    **Frozen detector.** Its parameters never require gradients and it stays in eval mode whatever
    ``train()`` is called with (``detector_mode="train_bn"`` lets it follow the module's mode, as the reference
    code does, for ablations only). Get one with :func:`train_detector` on the same data, or pass any trained
    classifier with the predictor's class count.

    Logs ``train_L_P``, ``train_L_D``, ``train_hinge``, ``train_area``, ``train_L_sel``,
    ``train_paper_objective`` (``L_P − β L_D + λ R``, the paper's unbounded form), ``train_mask_area`` and
    ``train_acc`` every step, and ``val_``/``test_`` ``loss``, ``acc`` (predictor on ``x_s``),
    ``detector_acc`` (detector on the complement), ``L_D`` and ``mask_area``.

    Args:
        selector: an ``nn.Module`` returning one-channel mask logits (resized bilinearly to the input when
            smaller), ``"lraspp_mobilenet_v3_large"`` (None: the default, random weights) or
            ``"small_selector"``.
        predictor: an ``nn.Module`` returning (B, K) logits, ``"small_resnet"`` or a timm name (default
            ``"resnet18"``, random weights).
        detector: the trained classifier of full images (an ``nn.Module``; a name builds an untrained network,
            useful only when the weights come from a checkpoint). May be None when ``use_detector=False``.
        num_classes: K for a predictor built by name; when None, the detector's class count (or 4).
        use_detector: False drops the detector hinge (the ablation: a plain selector/predictor with the area
            hinge); the detector, if given, is still evaluated for the logs.
        alpha, beta, delta, area_weight, area_threshold: α, β, δ (nats), λ, τ.
        detector_penalty: ``"hinge"`` (default) or ``"unbounded"`` (``−β L_D``, the paper's form; unstable:
            the selector can drive ``L_D`` up without bound).
        hinge_reduction: ``"batch"`` (hinge of batch means, the reference) or ``"sample"`` (mean of per-sample
            hinges).
        detector_mode: ``"eval"`` (default) or ``"train_bn"``.
        fill: ``q``: ``"mean"`` (0, the dataset mean of normalised inputs), ``"black"`` (``−mean/std``, needs
            ``normalization``), a number, one number per channel, or a tensor broadcastable to the input. For
            raw inputs in [0, 1], pass the dataset's channel means (``datamodule.normalization()[0]``).
        normalization: the input normalisation (a :class:`~lightning_xai.explain.Normalization` or a
            ``(mean, std)`` pair per channel), for ``fill="black"``.
        lr, weight_decay: AdamW for both optimisers; ``selector_lr`` overrides the selector's learning rate.
        warmup_epochs: linear warm-up per iteration over this many epochs.
        milestones, gamma: learning-rate decays by ``gamma`` at these epochs (counted from the start).
        selector_weights: a local state dict (or a path to one) loaded into the selector.
        batch_adapter: reads unusual batches (see :func:`~lightning_xai.data.split_batch`).

    ``load_from_checkpoint`` of a module built from ``nn.Module`` instances needs them again (same
    architectures); modules built by name are rebuilt from the hyperparameters.

    Example:
        >>> import torch
        >>> from lightning_xai.models import small_resnet
        >>> detector = small_resnet(num_classes=4)
        >>> module = ComprehensiveAttribution("small_selector", "small_resnet", detector).eval()
        >>> logits, mask, detector_logits = module(torch.rand(2, 3, 32, 32))
        >>> logits.shape, mask.shape, detector_logits.shape
        (torch.Size([2, 4]), torch.Size([2, 1, 32, 32]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        selector: nn.Module | str | None = None,
        predictor: nn.Module | str = "resnet18",
        detector: nn.Module | str | None = None,
        num_classes: int | None = None,
        use_detector: bool = True,
        alpha: float = 1.0,
        beta: float = 4.0,
        delta: float = 2.0,
        area_weight: float = 100.0,
        area_threshold: float = 0.6,
        detector_penalty: DetectorPenalty = "hinge",
        hinge_reduction: HingeReduction = "batch",
        detector_mode: DetectorMode = "eval",
        fill: FillSpec = "mean",
        normalization: Normalization | tuple[Sequence[float], Sequence[float]] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.03,
        selector_lr: float | None = None,
        warmup_epochs: int = 2,
        milestones: Sequence[int] = (80, 120, 160),
        gamma: float = 0.2,
        selector_weights: Mapping[str, Tensor] | str | None = None,
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__()
        check_in_choices("detector_penalty", detector_penalty, ("hinge", "unbounded"))
        check_in_choices("hinge_reduction", hinge_reduction, ("batch", "sample"))
        check_in_choices("detector_mode", detector_mode, ("eval", "train_bn"))
        if not isinstance(use_detector, bool):
            raise TypeError(f"`use_detector` must be a bool, got {describe(use_detector)}")
        for name, value in (("alpha", alpha), ("beta", beta), ("delta", delta), ("area_weight", area_weight)):
            check_number(name, value)
        if isinstance(area_threshold, bool) or not isinstance(area_threshold, (int, float)):
            raise ValueError(f"`area_threshold` must be a number in [0, 1], got {area_threshold!r}")
        if not 0.0 <= float(area_threshold) <= 1.0:
            raise ValueError(f"`area_threshold` must be in [0, 1], got {area_threshold!r}")
        check_number("lr", lr, strict=True)
        check_number("weight_decay", weight_decay)
        if selector_lr is not None:
            check_number("selector_lr", selector_lr, strict=True)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be a non-negative int, got {warmup_epochs!r}")
        if not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in milestones):
            raise ValueError(f"`milestones` must be positive ints (epochs), got {milestones!r}")
        check_number("gamma", gamma, strict=True)
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable, got {describe(batch_adapter)}")
        if detector is None and use_detector:
            raise ValueError(
                "`detector` is required with use_detector=True: pass a classifier trained on full images "
                "(e.g. `train_detector(datamodule, 'resnet18')`), or set use_detector=False for the ablation"
            )
        if isinstance(detector, str):
            detector_net: nn.Module | None = build_model(detector, 4 if num_classes is None else num_classes)
        elif detector is None or isinstance(detector, nn.Module):
            detector_net = detector
        else:
            raise TypeError(
                f"`detector` must be an nn.Module, a model name or None, got {describe(detector)}"
            )
        detector_classes = infer_num_classes(detector_net) if detector_net is not None else None
        if num_classes is None:
            num_classes = detector_classes if detector_classes is not None else 4
        check_positive("num_classes", num_classes)
        if detector_classes is not None and detector_classes != num_classes:
            raise ValueError(
                f"the detector has {detector_classes} classes but the predictor needs `num_classes`={num_classes}; "
                "the detector must classify the same classes"
            )
        predictor_net = build_model(predictor, num_classes)
        predictor_classes = infer_num_classes(predictor_net)
        if predictor_classes is not None and predictor_classes != num_classes:
            raise ValueError(
                f"the predictor has {predictor_classes} classes but the detector has {num_classes}; both must "
                "classify the same classes"
            )
        selector_net = build_selector(selector)
        if selector_weights is not None:
            state = safe_load(selector_weights) if isinstance(selector_weights, str) else selector_weights
            selector_net.load_state_dict(state)

        ignore = ["batch_adapter", "fill", "selector_weights"]
        ignore += [n for n, v in (("selector", selector), ("predictor", predictor), ("detector", detector))
                   if isinstance(v, nn.Module)]  # fmt: skip
        self.save_hyperparameters(ignore=ignore)
        fill_value = self._fill_tensor(fill, normalization)
        if isinstance(
            fill, Tensor
        ):  # kept as a list in the hyperparameters (per channel when it is per channel)
            per_channel = fill_value.shape[0] == 1 and fill_value.shape[2:] == (1, 1)
            self.hparams["fill"] = fill_value.flatten().tolist() if per_channel else fill_value.tolist()
        else:
            self.hparams["fill"] = fill
        self.hparams["num_classes"] = num_classes
        if isinstance(normalization, Normalization):  # plain values in the hyperparameters
            self.hparams["normalization"] = normalization.to_dict()

        self.selector = selector_net
        self.predictor = predictor_net
        self.detector = detector_net
        self.batch_adapter = batch_adapter
        self.num_classes = num_classes
        self.register_buffer("fill_value", fill_value, persistent=False)
        if self.detector is not None:
            self.detector.requires_grad_(False)
            self.detector.eval()
        self.automatic_optimization = False

    # -- set-up -------------------------------------------------------------------------------------------

    @staticmethod
    def _fill_tensor(fill: FillSpec, normalization: object) -> Tensor:
        if isinstance(fill, str):
            check_in_choices("fill", fill, ("mean", "black"))
            if fill == "mean":
                return torch.zeros(1, 1, 1, 1)
            norm = Normalization.of(normalization)
            if norm is None:
                raise ValueError(
                    "`fill='black'` needs `normalization=(mean, std)` of the inputs; for raw inputs in [0, 1] "
                    "pass `fill=0.0`"
                )
            return norm.black(torch.zeros(1, norm.channels, 1, 1))
        if isinstance(fill, bool):
            raise TypeError(f"`fill` must be 'mean', 'black', a number, a sequence or a tensor, got {fill!r}")
        if isinstance(fill, (int, float)):
            return torch.full((1, 1, 1, 1), float(fill))
        if isinstance(fill, (list, tuple)):
            fill = torch.as_tensor(fill, dtype=torch.float32)
        if isinstance(fill, Tensor):
            value = fill.detach().float().cpu()
            if value.ndim <= 1:
                return value.reshape(1, -1, 1, 1)
            while value.ndim < 4:
                value = value.unsqueeze(0)
            if value.ndim != 4 or value.shape[0] != 1 or not bool(torch.isfinite(value).all()):
                raise ValueError(
                    "`fill` as a tensor must be finite and per channel (C,) or one image (C, H, W) / (1, C, H, W), "
                    f"got {describe(fill)}"
                )
            return value
        raise TypeError(
            f"`fill` must be 'mean', 'black', a number, a sequence or a tensor, got {describe(fill)}"
        )

    def train(self, mode: bool = True) -> ComprehensiveAttribution:
        """Set the training mode; the detector stays in eval mode (unless ``detector_mode="train_bn"``)."""
        super().train(mode)
        if self.detector is not None and self.hparams.detector_mode == "eval":
            self.detector.eval()
        return self

    # -- the model -------------------------------------------------------------------------------------------

    def mask(self, inputs: Tensor) -> Tensor:
        """``m = σ(S(x))``, (B, 1, H, W) in (0, 1), differentiable."""
        if not isinstance(inputs, Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
            raise ValueError(
                f"`inputs` must be a floating-point image batch (B, C, H, W), got {describe(inputs)}"
            )
        return selector_mask(self.selector, inputs)

    def compose(self, inputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_s, x_{1−s})``: the image kept by the mask and its complement, both filled with ``q``."""
        fill = self.fill_value.to(inputs.dtype)
        if fill.shape[1] not in (1, inputs.shape[1]):
            raise ValueError(
                f"`fill` has {fill.shape[1]} channels but the inputs have {inputs.shape[1]} ({describe(inputs)})"
            )
        selected = mask * inputs + (1 - mask) * fill
        complement = (1 - mask) * inputs + mask * fill
        return selected, complement

    def _logits(self, network: nn.Module, inputs: Tensor, which: str) -> Tensor:
        logits = check_logits(logits_of(network(inputs)), inputs.shape[0])
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the {which} returned {logits.shape[1]} classes, expected {self.num_classes} (the predictor and "
                "the detector must classify the same classes)"
            )
        return logits

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(logits = f_P(x_s), mask = m, detector_logits = f_D(x_{1−s}))``; the last is None without a
        detector."""
        mask = self.mask(inputs)
        selected, complement = self.compose(inputs, mask)
        logits = self._logits(self.predictor, selected, "predictor")
        detector_logits = None
        if self.detector is not None:
            detector_logits = self._logits(self.detector, complement, "detector")
        return logits, mask, detector_logits

    @torch.no_grad()
    def explain(self, inputs: Tensor) -> Tensor:
        """The selector's mask (B, 1, H, W) in (0, 1); class-agnostic. Call ``.eval()`` first."""
        return self.mask(inputs)

    # -- the objective ----------------------------------------------------------------------------------------

    def area_term(self, mask: Tensor) -> Tensor:
        """``mean_b max(0, mean_hw m_b − τ)`` (without λ)."""
        return F.relu(mask.flatten(1).mean(1) - self.hparams.area_threshold).mean()

    def detector_term(self, predictor_ce: Tensor, detector_ce: Tensor) -> Tensor:
        """The detector penalty (with β) from per-sample CEs: ``β max(0, L_P − L_D + δ)`` (batch means, or the
        mean of per-sample hinges), or ``−β L_D`` with ``detector_penalty="unbounded"``."""
        beta, delta = self.hparams.beta, self.hparams.delta
        if self.hparams.detector_penalty == "unbounded":
            return -beta * detector_ce.mean()
        if self.hparams.hinge_reduction == "sample":
            return beta * F.relu(predictor_ce - detector_ce + delta).mean()
        return beta * F.relu(predictor_ce.mean() - detector_ce.mean() + delta)

    def compute_losses(self, inputs: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Every term of one training step; ``loss`` is what is back-propagated (``L_P^{pred} + L_sel``)."""
        mask = self.mask(inputs)
        selected, complement = self.compose(inputs, mask)
        # Path 1: the predictor's own loss on a detached selection (updates its BatchNorm statistics).
        predictor_loss = _cross_entropy(self._logits(self.predictor, selected.detach(), "predictor"), target)
        # Path 2: the same function for the selector's objective, with no parameter gradient and copied buffers.
        params = {name: p.detach() for name, p in self.predictor.named_parameters()}
        buffers = {name: b.clone() for name, b in self.predictor.named_buffers()}
        sel_logits = check_logits(logits_of(functional_call(self.predictor, (params, buffers), (selected,))))
        predictor_ce = _cross_entropy(sel_logits, target, reduction="none")
        zero = predictor_ce.new_zeros(())
        detector_ce = None
        if self.detector is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.hparams.use_detector):
                detector_logits = self._logits(self.detector, complement, "detector")
            detector_ce = _cross_entropy(detector_logits, target, reduction="none")
        hinge = self.detector_term(predictor_ce, detector_ce) if self.hparams.use_detector else zero
        area = self.area_term(mask)
        selector_loss = self.hparams.alpha * predictor_ce.mean() + hinge + self.hparams.area_weight * area
        detector_mean = detector_ce.detach().mean() if detector_ce is not None else None
        paper = None
        if detector_mean is not None:
            paper = predictor_ce.detach().mean() - self.hparams.beta * detector_mean
            paper = paper + self.hparams.area_weight * area.detach()
        return {
            "loss": predictor_loss + selector_loss,
            "L_P": predictor_loss,
            "L_D": detector_mean,
            "hinge": hinge,
            "area": area,
            "L_sel": selector_loss,
            "paper_objective": paper,
            "mask_area": mask.detach().mean(),
            "logits": sel_logits.detach(),
        }

    # -- steps ---------------------------------------------------------------------------------------------------

    def _split(self, batch: Any) -> tuple[Tensor, Tensor]:
        parts = split_batch(batch, self.batch_adapter)
        if parts.target is None:
            raise ValueError(
                "ComprehensiveAttribution needs labels in the batch (a `label` key or an (input, target) tuple)"
            )
        return parts.inputs, parts.target

    def _lr_factor(self, batch_idx: int) -> float:
        epoch = self.current_epoch
        factor = self.hparams.gamma ** sum(epoch >= m for m in self.hparams.milestones)
        warmup = self.hparams.warmup_epochs
        if warmup > 0 and epoch < warmup:
            per_epoch = self.trainer.num_training_batches
            if isinstance(per_epoch, (int, float)) and math.isfinite(per_epoch) and per_epoch > 0:
                factor *= min(1.0, (epoch * per_epoch + batch_idx + 1) / (warmup * per_epoch))
            else:
                factor *= (epoch + 1) / warmup
        return factor

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, target = self._split(batch)
        selector_opt, predictor_opt = self.optimizers()
        factor = self._lr_factor(batch_idx)
        for optimizer in (selector_opt, predictor_opt):
            for group in optimizer.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        losses = self.compute_losses(inputs, target)
        selector_opt.zero_grad()
        predictor_opt.zero_grad()
        self.manual_backward(losses["loss"])
        selector_opt.step()
        predictor_opt.step()
        size = int(target.shape[0])
        for key in ("L_P", "L_D", "hinge", "area", "L_sel", "paper_objective", "mask_area"):
            if losses[key] is not None:
                self.log(f"train_{key}", losses[key].detach(), on_step=True, on_epoch=True, batch_size=size)
        acc = (losses["logits"].argmax(1) == target).float().mean()
        self.log("train_acc", acc, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        return losses["loss"].detach()

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        inputs, target = self._split(batch)
        logits, mask, detector_logits = self(inputs)
        size = int(target.shape[0])
        loss = _cross_entropy(logits, target)
        self.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=size)
        acc = (logits.argmax(1) == target).float().mean()
        self.log(f"{stage}_acc", acc, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}_mask_area", mask.mean(), on_epoch=True, batch_size=size)
        if detector_logits is not None:
            self.log(f"{stage}_L_D", _cross_entropy(detector_logits, target), on_epoch=True, batch_size=size)
            detector_acc = (detector_logits.argmax(1) == target).float().mean()
            self.log(f"{stage}_detector_acc", detector_acc, on_epoch=True, batch_size=size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[Tensor, Tensor, Tensor | None]:
        return self(split_batch(batch, self.batch_adapter).inputs)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        wd = self.hparams.weight_decay
        selector_lr = self.hparams.selector_lr or self.hparams.lr
        selector_opt = torch.optim.AdamW(self.selector.parameters(), lr=selector_lr, weight_decay=wd)
        predictor_opt = torch.optim.AdamW(self.predictor.parameters(), lr=self.hparams.lr, weight_decay=wd)
        for optimizer in (selector_opt, predictor_opt):
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        return [selector_opt, predictor_opt]
