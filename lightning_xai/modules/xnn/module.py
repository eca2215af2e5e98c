"""The XNN LightningModule: trains the explanation network on a frozen backbone's features."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.regression import R2Score

from ..._checks import check_in_choices, check_int, check_number, describe
from ...data.batch import Batch, split_batch
from ...explain import preserved_state
from ...models import build_model, logits_of, resolve_layer
from ..mhex import forward_kwargs
from ._dist import _all_reduce, _broadcast_from_rank_zero
from ._explanations import _ConceptExplanations
from ._helpers import _centre_biases, _epochs, _layer_width, _resolve_targets
from .concepts import _FeatureTap, _final_linear
from .losses import (
    _PT_OFFSET,
    PullAwayMode,
    _loss_dtype,
    prediction_loss,
    pull_away_term,
    sparse_reconstruction_loss,
)
from .network import _IDENTITY, _RELU, _UNDECIDED, DecoderActivation, XNNNetwork

__all__ = ["XNN"]


class XNN(_ConceptExplanations, L.LightningModule):
    """An explanation network (XNN) trained on the features of a frozen backbone (Qi, Khorram and Li 2017).

    ``h = encoder(x) ≥ 0`` (k concepts) embeds the tapped features ``x``; ``ŷ = W h + b`` regresses the backbone's
    logit(s) of ``target_class``; ``x̂ = decoder(h)`` reconstructs part of ``x``. Training minimises

    ``α_pred·mean (ŷ−y)² + α_rec·(1/D) Σ_d log(1 + q·mean_n (x̂−x)²) + α_pt·Σ_c PT(h ⊙ W_c + 1e-8)``

    over the XNN's parameters only. The backbone is kept in eval mode with ``requires_grad=False`` during fit
    and its flags are restored in ``teardown``. Before the joint fit, ``on_train_start`` runs greedy layer-wise
    autoencoder pretraining and a head regression (``pretrain_epochs`` per stage) on the cached training
    features. After fit, ``mean_contribution`` (n_out, k), the mean of ``h_j·W_{c,j}`` over the training set,
    is computed in eval mode and stored as a buffer. Logs ``xnn/pred_mse``, ``xnn/recon_log``,
    ``xnn/pull_away``, ``xnn/loss``; during validation ``xnn/faithfulness_r2`` and ``xnn/active_concepts``.

    Args:
        backbone: the network to explain: an ``nn.Module`` (timm, torchvision, Hugging Face; outputs may be a
            ``ModelOutput``), ``"small_resnet"`` or a timm model name (random weights unless ``pretrained``).
        layer: the features: ``None`` taps the input of the backbone's final ``nn.Linear`` (the penultimate
            features); any name / module / timm index / ``"auto"`` accepted by
            :func:`~lightning_xai.models.resolve_layer` taps that layer's output. (B, C, h, w) maps are averaged
            over space and (B, N, C) tokens over tokens.
        num_concepts: k.
        target_class: the explained class (int: one-vs-all, one head), a list of classes (one head each, shared
            concepts), or ``"all"`` for every class of the backbone at once.
        num_classes: classes of a backbone built by name, and of ``"all"`` when the final Linear cannot tell.
        feature_dim: D, when it cannot be read from the tapped layer.
        hidden, dropout: encoder hidden sizes and the dropout after the first layer (the reference's 800, 100
            and 0.02).
        q, alpha_pred, alpha_rec, alpha_pt, pt_mode: the loss (§4 of the spec; PT along ``"images"`` or
            ``"features"``).
        decoder_output_activation: ``"auto"`` (ReLU when the features of the first training batch are all
            non-negative, else identity), ``"relu"`` or ``"identity"``.
        pretrain_epochs: epochs per greedy pretraining stage and for the head (0 skips pretraining).
        centre_biases: before each pretraining stage, shift each encoder unit's bias so that its pre-activation
            is centred on its median over the cached features: every unit, concepts included, starts active on
            about half of the training data. ``False`` (the reference) keeps PyTorch's initialisation, with
            which some of the k concepts often start, and stay, inactive on every image.
        lr, weight_decay, lr_step, lr_gamma: Adam and ``StepLR(lr_step, lr_gamma)`` per epoch.
        heatmap_layer: default Grad-CAM layer of :meth:`concept_heatmaps` (``"auto"``: the last spatial stage).
        batch_adapter: reads unusual batches (see :func:`~lightning_xai.data.split_batch`).

    Example:
        >>> import torch
        >>> backbone = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> xnn = XNN(backbone, num_concepts=4, target_class=1, hidden=(8,)).eval()
        >>> x = torch.rand(6, 3)
        >>> xnn(x).shape, xnn.concepts(x).shape
        (torch.Size([6, 1]), torch.Size([6, 4]))
        >>> parts, y_hat = xnn.contributions(x)
        >>> torch.allclose(parts.sum(-1) + xnn.network.head.bias, y_hat)
        True
    """

    def __init__(
        self,
        backbone: nn.Module | str = "small_resnet",
        layer: str | int | None = None,
        num_concepts: int = 5,
        target_class: int | list[int] | Literal["all"] = 0,
        num_classes: int | None = None,
        feature_dim: int | None = None,
        hidden: Sequence[int] = (800, 100),
        dropout: float = 0.02,
        q: float = 100.0,
        alpha_pred: float = 1.0,
        alpha_rec: float = 10.0,
        alpha_pt: float = 10.0,
        pt_mode: PullAwayMode = "images",
        decoder_output_activation: DecoderActivation = "auto",
        pretrain_epochs: int = 10,
        centre_biases: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_step: int = 40,
        lr_gamma: float = 0.1,
        heatmap_layer: str | int = "auto",
        pretrained: bool = False,
        batch_adapter: Callable[[Any], Batch] | None = None,
    ) -> None:
        super().__init__()
        # A backbone given by name is rebuilt from the hyperparameters; a module must be passed again to
        # `load_from_checkpoint` (its weights are in the checkpoint).
        self.save_hyperparameters(
            ignore=["batch_adapter"] + ([] if isinstance(backbone, str) else ["backbone"])
        )
        if isinstance(backbone, str):
            backbone = build_model(backbone, 4 if num_classes is None else num_classes, pretrained)
        elif not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be an nn.Module or a model name, got {describe(backbone)}")
        check_in_choices("pt_mode", pt_mode, ("images", "features"))
        check_in_choices("decoder_output_activation", decoder_output_activation, ("auto", "relu", "identity"))
        check_int("num_concepts", num_concepts, 1)
        check_int("pretrain_epochs", pretrain_epochs, 0)
        if not isinstance(centre_biases, bool):
            raise TypeError(f"`centre_biases` must be a bool, got {describe(centre_biases)}")
        check_int("lr_step", lr_step, 1)
        check_number("q", q, strict=True)
        for name, value in (("alpha_pred", alpha_pred), ("alpha_rec", alpha_rec), ("alpha_pt", alpha_pt)):
            check_number(name, value)
        check_number("lr", lr, strict=True)
        check_number("weight_decay", weight_decay)
        check_number("lr_gamma", lr_gamma, strict=True)
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable, got {describe(batch_adapter)}")
        self.backbone = backbone
        self.batch_adapter = batch_adapter

        if layer is None:
            tapped = _final_linear(backbone)
            self._tap = _FeatureTap(tapped, pre=True)
            dim = tapped.in_features
        else:
            tapped = resolve_layer(backbone, "auto" if layer == "auto" else layer)
            self._tap = _FeatureTap(tapped, pre=False)
            dim = _layer_width(backbone, tapped)
        if feature_dim is not None:
            check_int("feature_dim", feature_dim, 1)
            if dim is not None and dim != feature_dim:
                raise ValueError(f"`feature_dim`={feature_dim} but the tapped layer gives {dim} features")
            dim = feature_dim
        if dim is None:
            raise ValueError(
                f"cannot read the width of the tapped layer ({type(tapped).__name__}); pass `feature_dim=`"
            )
        targets = _resolve_targets(target_class, backbone, num_classes)
        self.register_buffer("targets", torch.tensor(targets, dtype=torch.long))
        auto = decoder_output_activation == "auto"
        self.network = XNNNetwork(
            dim,
            num_concepts,
            len(targets),
            hidden,
            dropout,
            decoder_output_relu=None if auto else decoder_output_activation == "relu",
        )
        self.register_buffer("mean_contribution", torch.zeros(len(targets), num_concepts))
        self.register_buffer("pretrained_flag", torch.tensor(False))
        self.val_r2 = R2Score()
        self._frozen_state: list[tuple[nn.Module | nn.Parameter, bool]] | None = None

    # -- properties -----------------------------------------------------------------------------------------

    @property
    def num_concepts(self) -> int:
        return self.network.num_concepts

    @property
    def num_outputs(self) -> int:
        return int(self.targets.numel())

    @property
    def feature_dim(self) -> int:
        return self.network.dims[0]

    # -- frozen backbone -------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._frozen_state is None:
            self._frozen_state = [(m, m.training) for m in self.backbone.modules()] + [
                (p, p.requires_grad) for p in self.backbone.parameters()
            ]
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._frozen_state is not None:
            for obj, flag in self._frozen_state:
                if isinstance(obj, nn.Module):
                    obj.training = flag
                else:
                    obj.requires_grad_(flag)
            self._frozen_state = None

    def train(self, mode: bool = True) -> XNN:
        super().train(mode)
        if self._frozen_state is not None:
            self.backbone.eval()
        return self

    # -- features and forward --------------------------------------------------------------------------------

    def _split(self, batch: Any) -> tuple[Tensor, dict[str, Any]]:
        parts = split_batch(batch, self.batch_adapter)
        return parts.inputs, forward_kwargs(self.backbone, parts.extras)

    @torch.no_grad()
    def features_and_targets(self, inputs: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The pooled features ``x`` (B, D) and the explained logits ``y`` (B, n_out) from one backbone forward,
        both in the dtype of the XNN's parameters (``self.network.dtype``) and without gradients."""
        with self._tap.capturing() as tap:
            logits = logits_of(self.backbone(inputs, **kwargs))
        dtype = self.network.dtype
        features = tap.features().to(dtype)
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"the tapped features have {features.shape[1]} dimensions, the XNN expects {self.feature_dim}"
            )
        if logits.ndim != 2 or int(self.targets.max()) >= logits.shape[1]:
            raise ValueError(
                f"the backbone must return (B, K) logits with K > {int(self.targets.max())}, got {describe(logits)}"
            )
        return features, logits.to(dtype).index_select(1, self.targets)

    def forward(self, inputs: Tensor, **kwargs: Any) -> Tensor:
        """The XNN's prediction ŷ (B, n_out) of the explained logit(s)."""
        x, _ = self.features_and_targets(inputs, **kwargs)
        return self.network(x)[2]

    @torch.no_grad()
    def concepts(self, inputs: Tensor, **kwargs: Any) -> Tensor:
        """The concepts h (B, k) ≥ 0."""
        return self.network.encode(self.features_and_targets(inputs, **kwargs)[0])

    @torch.no_grad()
    def contributions(self, inputs: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(h ⊙ W, ŷ)``: each concept's contribution (B, n_out, k) and the prediction (B, n_out), with
        ``ŷ = Σ_j contribution_j + b`` exactly (the head's bias is ``self.network.head.bias``)."""
        x, _ = self.features_and_targets(inputs, **kwargs)
        h, _, y_hat = self.network(x)
        return self.network.contributions(h), y_hat

    # -- losses and steps ------------------------------------------------------------------------------------

    def _decide_decoder_activation(self, features: Tensor) -> None:
        flag = self.network.decoder_output_relu
        if int(flag) != _UNDECIDED:
            return
        negative = (features < 0).any().to(torch.float32).reshape(1)
        _all_reduce(negative, dist.ReduceOp.MAX)
        flag.fill_(_IDENTITY if bool(negative.item()) else _RELU)

    def losses(
        self, x: Tensor, y: Tensor, alpha_rec: float | None = None, alpha_pt: float | None = None
    ) -> dict[str, Tensor]:
        """The loss terms on features ``x`` (B, D) and targets ``y`` (B, n_out), and their weighted sum."""
        hp = self.hparams
        alpha_rec = hp.alpha_rec if alpha_rec is None else alpha_rec
        alpha_pt = hp.alpha_pt if alpha_pt is None else alpha_pt
        h, x_hat, y_hat = self.network(x)
        pred = prediction_loss(y_hat, y)
        recon = sparse_reconstruction_loss(x_hat, x, hp.q)
        batch = x.shape[0]
        need = batch if hp.pt_mode == "images" else self.num_concepts
        if need >= 2:
            dtype = _loss_dtype(h)
            weight = self.network.head.weight.to(dtype)
            pull = sum(
                pull_away_term(h.to(dtype) * weight[c] + _PT_OFFSET, hp.pt_mode)
                for c in range(weight.shape[0])
            )
        else:
            warnings.warn(
                f"the pull-away term needs at least 2 {'samples per batch' if hp.pt_mode == 'images' else 'concepts'}"
                f"; skipped for a batch of {batch}",
                UserWarning,
                stacklevel=2,
            )
            pull = torch.zeros((), device=x.device)
        total = hp.alpha_pred * pred + alpha_rec * recon + alpha_pt * pull
        return {
            "pred_mse": pred,
            "recon_log": recon,
            "pull_away": pull,
            "loss": total,
            "h": h,
            "y_hat": y_hat,
        }

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, kwargs = self._split(batch)
        x, y = self.features_and_targets(inputs, **kwargs)
        self._decide_decoder_activation(x)
        out = self.losses(x, y)
        size = int(x.shape[0])
        for key in ("pred_mse", "recon_log", "pull_away"):
            self.log(
                f"xnn/{key}", out[key].detach(), on_step=False, on_epoch=True, batch_size=size, sync_dist=True
            )
        self.log(
            "xnn/loss",
            out["loss"].detach(),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
            sync_dist=True,
        )
        return out["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, kwargs = self._split(batch)
        x, y = self.features_and_targets(inputs, **kwargs)
        h, _, y_hat = self.network(x)
        size = int(x.shape[0])
        preds, target = (y_hat[:, 0], y[:, 0]) if self.num_outputs == 1 else (y_hat, y)
        self.val_r2.update(preds, target)
        self.log("xnn/faithfulness_r2", self.val_r2, on_epoch=True, prog_bar=True, batch_size=size)
        active = (h > 0).float().sum(1).mean()
        self.log("xnn/active_concepts", active, on_epoch=True, batch_size=size, sync_dist=True)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        inputs, kwargs = self._split(batch)
        x, y = self.features_and_targets(inputs, **kwargs)
        h, _, y_hat = self.network(x)
        return {
            "concepts": h,
            "contributions": self.network.contributions(h),
            "prediction": y_hat,
            "target": y,
        }

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.network.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_step, gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- pretraining and the mean contributions -----------------------------------------------------------

    def _training_batches(self) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        trainer = self.trainer
        loader = trainer.train_dataloader
        limit = trainer.num_training_batches
        for i, batch in enumerate(loader):
            if i >= limit:
                break
            # as the fit loop does: "64-true" / "bf16-true" convert the inputs to the module's dtype
            batch = trainer.precision_plugin.convert_input(batch)
            batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
            batch = trainer.strategy.batch_to_device(batch, self.device)
            yield self._split(batch)

    @torch.no_grad()
    def _cache_features(self) -> tuple[Tensor, Tensor, int]:
        xs, ys, size = [], [], 0
        for inputs, kwargs in self._training_batches():
            x, y = self.features_and_targets(inputs, **kwargs)
            size = max(size, x.shape[0])
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ValueError("XNN pretraining found no training batches")
        return torch.cat(xs), torch.cat(ys), size

    def on_train_start(self) -> None:
        if self.hparams.pretrain_epochs == 0 or bool(self.pretrained_flag):
            return
        x, y, batch_size = self._cache_features()
        self._decide_decoder_activation(x)
        with torch.enable_grad(), preserved_state(self.network, buffers=False):
            self.network.train()
            self.pretrain(x, y, self.hparams.pretrain_epochs, batch_size)
        _broadcast_from_rank_zero(self.network)
        self.pretrained_flag.fill_(True)

    def pretrain(self, x: Tensor, y: Tensor, epochs: int, batch_size: int) -> None:
        """Greedy layer-wise pretraining of shallow ReLU autoencoders (D↔h1, h1↔h2, …, ↔k; MSE, Adam at
        ``lr``; each stage's encoder biases centred first when ``centre_biases``), then a linear regression of ``y`` on the concepts initialises the head. Runs on this process's
        features only; :meth:`on_train_start` broadcasts rank 0's result."""
        net = self.network
        lr = self.hparams.lr
        codes = x
        depth = len(net.encoder)
        for stage in range(depth):
            encoder, decoder = net.encoder[stage], net.decoder[depth - 1 - stage]
            output_relu = stage > 0 or int(net.decoder_output_relu) == _RELU
            if self.hparams.centre_biases:
                _centre_biases(encoder, codes)
            optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
            for chunk in _epochs(codes.shape[0], epochs, batch_size, codes.device):
                inp = codes[chunk]
                rec = decoder(F.relu(encoder(inp)))
                rec = F.relu(rec) if output_relu else rec
                loss = F.mse_loss(rec, inp)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                codes = F.relu(encoder(codes))
        optimizer = torch.optim.Adam(net.head.parameters(), lr=lr)
        for chunk in _epochs(codes.shape[0], epochs, batch_size, codes.device):
            loss = prediction_loss(net.head(codes[chunk]), y[chunk])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def on_train_end(self) -> None:
        self.update_mean_contribution()

    @torch.no_grad()
    def update_mean_contribution(self, batches: Any = None) -> Tensor:
        """Mean of ``h_j · W_{c,j}`` over the training batches (or ``batches``) in eval mode, summed over ranks;
        stored in the ``mean_contribution`` buffer (n_out, k) and returned."""
        total = torch.zeros_like(self.mean_contribution, dtype=torch.float64)
        count = torch.zeros((), dtype=torch.float64, device=total.device)
        source = self._training_batches() if batches is None else (self._split(b) for b in batches)
        with preserved_state(self.network, eval_mode=True):
            for inputs, kwargs in source:
                x, _ = self.features_and_targets(inputs, **kwargs)
                total += self.network.contributions(self.network.encode(x)).sum(0).double()
                count += x.shape[0]
        _all_reduce(total)
        _all_reduce(count)
        self.mean_contribution.copy_((total / count.clamp_min(1)).to(self.mean_contribution.dtype))
        return self.mean_contribution
