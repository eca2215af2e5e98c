"""MHEX (lightning_xai reconstruction) as a LightningModule wrapper around a timm or Hugging Face classifier."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import describe, format_target
from ..data.batch import Batch, split_batch
from ..heads.mhex import (
    GateCalibration,
    GateMode,
    LayerWeights,
    MHEXHandle,
    MHEXHeads,
    MHEXOptions,
    check_lambdas,
    head_accuracy,
    infer_num_classes,
    inject_mhex,
    lambda_list,
)
from ..losses import SampleWeightedLossMixin
from ..models import logits_of

__all__ = ["MHEXClassifier", "forward_kwargs"]


def forward_kwargs(model: nn.Module, extras: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a batch's ``extras`` that ``model.forward`` takes by name (``attention_mask``,
    ``token_type_ids``, ...); nothing for a forward with ``**kwargs`` only, so that labels never leak in."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    named = {
        n
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("labels",)
    }
    return {k: v for k, v in extras.items() if k in named}


class MHEXClassifier(SampleWeightedLossMixin, L.LightningModule):
    """A classifier trained with MHEX (lightning_xai reconstruction): gated stages, deep supervision, saliency.

    The heads are injected in ``__init__`` (:func:`~lightning_xai.heads.inject_mhex`), so they are in the
    ``state_dict`` and ``load_from_checkpoint`` restores them. The training loss is
    ``CE(z_main, y) + Σ_l λ_l CE(z_l, y)``, computed per sample, so callbacks that reweight samples through the
    loss tap (:class:`~lightning_xai.callbacks.SampleWeightedLossMixin`) act on the whole of it. Logs
    ``train_loss``, ``train_acc``, ``train_head_<stage>_loss`` / ``_acc``, and ``val_``/``test_`` loss and
    accuracy of the main classifier and each head.

    Args:
        model: an ``nn.Module`` classifier (timm CNN or ViT, torchvision ResNet, Hugging Face BERT-like
            sequence classifier) or a timm model name (built with random weights unless ``pretrained``).
            ``load_from_checkpoint`` of a module built from an ``nn.Module`` needs ``model=`` again (with the same
            architecture).
        num_classes: classes of a timm model built by name (4 when None); checked against a given module.
        stages, gate_mode, gate_calibration, b0, gate_rank, refine, refine_max_channels, detach_heads,
            special_token_ids: see :func:`~lightning_xai.heads.inject_mhex`.
        lambdas: λ_l, one number or one per head, all > 0.
        layer_weights, token_smoothing_sigma: defaults for :meth:`explain`.
        lr, weight_decay: AdamW.
        batch_adapter: reads unusual batches (see :func:`~lightning_xai.data.split_batch`).

    Example:
        >>> import torch
        >>> module = MHEXClassifier("resnet18", num_classes=4).eval()
        >>> x = torch.rand(2, 3, 32, 32)
        >>> module(x).shape, module.explain(x).shape
        (torch.Size([2, 4]), torch.Size([2, 1, 32, 32]))
    """

    def __init__(
        self,
        model: nn.Module | str = "resnet18",
        num_classes: int | None = None,
        stages: str | list[int | str] = "auto",
        gate_mode: GateMode = "in_path",
        gate_calibration: GateCalibration = "unit",
        b0: float | None = None,
        gate_rank: int | None = 32,
        refine: bool | Literal["auto"] = "auto",
        refine_max_channels: int = 256,
        detach_heads: bool = False,
        lambdas: float | list[float] = 0.3,
        special_token_ids: list[int] | None = None,
        layer_weights: Literal["uniform", "inverse_depth"] | list[float] = "uniform",
        token_smoothing_sigma: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        pretrained: bool = False,
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            count = 4 if num_classes is None else num_classes
            network = timm.create_model(model, pretrained=pretrained, num_classes=count)
        elif not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module or a timm model name, got {describe(model)}")
        else:
            network = model
            found = infer_num_classes(model) if num_classes is not None else None
            if found is not None and found != num_classes:
                raise ValueError(f"`num_classes`={num_classes} but the model has {found} classes")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"`lr` must be a positive number, got {lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"`weight_decay` must be a non-negative number, got {weight_decay!r}")
        check_lambdas(lambdas)
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable, got {describe(batch_adapter)}")
        # A model given by name is rebuilt from the hyperparameters; a module must be passed to
        # `load_from_checkpoint` again.
        self.save_hyperparameters(ignore=["batch_adapter"] + ([] if isinstance(model, str) else ["model"]))
        self.model = network
        self.batch_adapter = batch_adapter
        options = MHEXOptions(
            stages=stages,
            num_classes=num_classes,
            gate_mode=gate_mode,
            gate_calibration=gate_calibration,
            b0=b0,
            gate_rank=gate_rank,
            refine=refine,
            refine_max_channels=refine_max_channels,
            detach_heads=detach_heads,
            special_token_ids=special_token_ids,
        )
        self.mhex: MHEXHandle = inject_mhex(network, options=options)
        self.lambdas = lambda_list(lambdas, len(self.mhex.stages))
        self.heads.layer_weights(layer_weights)  # validates now rather than at the first `explain`
        self.layer_weights = layer_weights
        self.token_smoothing_sigma = token_smoothing_sigma

    @property
    def heads(self) -> MHEXHeads:
        return self.mhex.heads

    def forward(self, inputs: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return logits_of(self.model(inputs, *args, **kwargs))

    # -- steps --------------------------------------------------------------------------------------------

    def _split(self, batch: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        parts = split_batch(batch, self.batch_adapter)
        if parts.target is None:
            raise ValueError(
                "MHEXClassifier needs labels in the batch (a `label` key or an (input, target) tuple)"
            )
        return parts.inputs, parts.target, forward_kwargs(self.model, parts.extras)

    def _losses(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample deep-supervision loss and each head's per-sample cross-entropy."""
        head_logits = self.heads.latest_head_logits(main_logits=logits)
        per_sample = F.cross_entropy(logits.float(), target, reduction="none")
        heads = {}
        for lam, (key, z) in zip(self.lambdas, head_logits.items(), strict=True):
            heads[key] = F.cross_entropy(z, target, reduction="none")
            per_sample = per_sample + lam * heads[key]
        return per_sample, heads

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, target, kwargs = self._split(batch)
        logits = self(inputs, **kwargs)
        per_sample, heads = self._losses(logits, target)
        loss = self.sample_weighted_loss(logits, target, per_sample=per_sample)
        size = int(target.shape[0])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(
            "train_acc", head_accuracy(logits.detach(), target), on_epoch=True, prog_bar=True, batch_size=size
        )
        for key, values in heads.items():
            self.log(
                f"train_head_{key}_loss", values.detach().mean(), on_step=True, on_epoch=True, batch_size=size
            )
            self.log(f"train_head_{key}_acc", head_accuracy(self.heads.head_logits[key].detach(), target),
                     on_epoch=True, batch_size=size)  # fmt: skip
        return loss

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        inputs, target, kwargs = self._split(batch)
        logits = self(inputs, **kwargs)
        size = int(target.shape[0])
        loss = F.cross_entropy(logits.float(), target)
        self.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=size)
        self.log(f"{stage}_acc", head_accuracy(logits, target), on_epoch=True, prog_bar=True, batch_size=size)
        for key, z in self.heads.latest_head_logits(main_logits=logits).items():
            self.log(f"{stage}_head_{key}_acc", head_accuracy(z, target), on_epoch=True, batch_size=size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        parts = split_batch(batch, self.batch_adapter)
        return self(parts.inputs, **forward_kwargs(self.model, parts.extras))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # -- explanations ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def explain(
        self,
        inputs: Tensor,
        target: int | list[int] | Tensor | None = None,
        *args: Any,
        layer_weights: LayerWeights | None = None,
        token_smoothing_sigma: float | None = None,
        special_tokens_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """MHEX saliency of ``target`` (the predicted class when None): (B, 1, H, W) in [0, 1] for images,
        (B, T) for token ids (extra forward arguments such as the attention mask go in ``args`` / ``kwargs``).

        Runs one forward in the module's current mode; call ``.eval()`` first for dropout-free maps.
        """
        with self.heads.capturing():
            logits = self(inputs, *args, **kwargs)
        formatted = format_target(target, inputs.shape[0], logits.shape[1], logits.device)
        if formatted is None:
            formatted = logits.argmax(1)
        size = tuple(inputs.shape[-2:]) if self.heads.kind != "tokens" else None
        return self.heads.saliency(
            formatted,
            size,
            layer_weights=self.layer_weights if layer_weights is None else layer_weights,
            token_smoothing_sigma=(
                self.token_smoothing_sigma if token_smoothing_sigma is None else token_smoothing_sigma
            ),
            special_tokens_mask=special_tokens_mask,
        )
