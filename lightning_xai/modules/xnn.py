"""XNN: concept explanations with a sparse reconstruction autoencoder on a frozen network (spec: ``specs/xnn.md``).

An explanation network embeds a layer's high-dimensional features ``x`` into a few non-negative concepts
``h = encoder(x)`` (the x-features of Qi, Khorram and Li, arXiv 1709.05360) that still reproduce the class score
(``ŷ = W h + b``), reconstruct part of the features (a log penalty tolerates large errors on some dimensions)
and are pushed apart (the pull-away term). The backbone stays frozen: only the explanation network trains.

The losses are plain functions (:func:`sparse_reconstruction_loss`, :func:`pull_away_term`,
:func:`prediction_loss`); :class:`XNNNetwork` is the encoder / decoder / head; :class:`XNN` is the
LightningModule that trains it on a frozen backbone's features; :func:`fit_xnn` is the retry heuristic for
degenerate concepts.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.regression import R2Score

from .._checks import check_in_choices, check_positive, describe
from ..attr.xnn import XNNConceptAttribution
from ..data.batch import Batch, split_batch
from ..explain import preserved_state
from ..models import build_model, list_stages, logits_of, resolve_layer
from .mhex import forward_kwargs

__all__ = [
    "XNN",
    "ConceptModel",
    "XNNNetwork",
    "balance_check",
    "fit_xnn",
    "prediction_loss",
    "pull_away_term",
    "sparse_reconstruction_loss",
]

PullAwayMode = Literal["images", "features"]
DecoderActivation = Literal["auto", "relu", "identity"]

# Values of the `decoder_output_relu` buffer: the "auto" choice is made on the first training batch.
_UNDECIDED, _IDENTITY, _RELU = -1, 0, 1
# Z = h ⊙ W_c + 1e-8, as in the reference: rows of inactive concepts stay defined under normalisation.
_PT_OFFSET = 1e-8


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------


def prediction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``mean_n (ŷ_n − y_n)²`` over every entry, in float32; the two tensors must have the same shape.

    Nothing is broadcast: a (B,) target against a (B, 1) prediction is a ``ValueError``, not a (B, B) matrix.

    Example:
        >>> import torch
        >>> float(prediction_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])))
        2.5
    """
    if not isinstance(prediction, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"`prediction` and `target` must be tensors, got {describe(prediction)}, {describe(target)}"
        )
    if prediction.shape != target.shape:
        raise ValueError(
            f"the XNN prediction and its target must have the same shape (B, n_out); got prediction "
            f"{tuple(prediction.shape)} and target {tuple(target.shape)}. Reshape explicitly (nothing is broadcast)"
        )
    return (prediction.float() - target.float()).pow(2).mean()


def sparse_reconstruction_loss(reconstruction: Tensor, features: Tensor, q: float = 100.0) -> Tensor:
    """The sparse reconstruction penalty ``(1/D) Σ_d log(1 + q · mean_n (x̂_{n,d} − x_{n,d})²)``.

    The squared error is averaged over the batch per feature dimension, then passed through ``log(1 + q·)`` and
    averaged over dimensions. The penalty grows only logarithmically, so a few badly reconstructed dimensions
    cost little: only part of the feature space has to be reconstructed. For tiny errors it equals ``q · MSE``.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 2)
        >>> x_hat = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> round(float(sparse_reconstruction_loss(x_hat, x, q=1.0)), 6)  # (log 2 + log 1) / 2
        0.346574
    """
    if reconstruction.shape != features.shape or features.ndim != 2:
        raise ValueError(
            f"`reconstruction` and `features` must both be (N, D) of the same shape, got "
            f"{tuple(reconstruction.shape)} and {tuple(features.shape)}"
        )
    check_positive("q", q)
    per_dim = (reconstruction.float() - features.float()).pow(2).mean(0)
    return torch.log1p(q * per_dim).mean()


def pull_away_term(z: Tensor, mode: PullAwayMode = "images") -> Tensor:
    """The pull-away term ``PT(Z) = 1/(N(N−1)) Σ_{n≠m} cos(z_n, z_m)²`` of the rows of ``z`` (N × k).

    ``mode="images"`` (default) compares the rows, one per image: different images are pushed towards orthogonal
    concept vectors. ``mode="features"`` compares the k columns (each a vector over the batch) and normalises by
    ``k(k−1)``. Identical rows give 1, mutually orthogonal rows 0, and scaling rows by positive factors changes
    nothing. Needs at least two rows (columns).

    Example:
        >>> import torch
        >>> float(pull_away_term(torch.ones(3, 4))), float(pull_away_term(torch.eye(3)))
        (1.0, 0.0)
    """
    check_in_choices("mode", mode, ("images", "features"))
    if not isinstance(z, Tensor) or z.ndim != 2:
        raise ValueError(f"`z` must be an (N, k) tensor, got {describe(z)}")
    rows = z.float() if mode == "images" else z.float().t()
    n = rows.shape[0]
    if n < 2:
        raise ValueError(
            f"the pull-away term needs at least 2 {'rows' if mode == 'images' else 'columns'}, got {n}"
        )
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    cos2 = (unit @ unit.t()).pow(2)
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


# ----------------------------------------------------------------------------------------------------------
# The explanation network
# ----------------------------------------------------------------------------------------------------------


class XNNNetwork(nn.Module):
    """Encoder ``D → hidden → k`` (ReLU after each Linear, dropout after the first), decoder ``k → … → D`` (ReLU
    after every Linear; the output's ReLU is optional) and the linear head ``ŷ = W h + b``.

    ``forward(x)`` returns ``(h, x̂, ŷ)`` with ``h ≥ 0`` of shape (B, k), ``x̂`` (B, D) and ``ŷ`` (B, n_out).

    Example:
        >>> import torch
        >>> net = XNNNetwork(16, num_concepts=3, num_outputs=2, hidden=(8, 4)).eval()
        >>> h, x_hat, y_hat = net(torch.rand(5, 16))
        >>> h.shape, x_hat.shape, y_hat.shape, bool((h >= 0).all())
        (torch.Size([5, 3]), torch.Size([5, 16]), torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        in_features: int,
        num_concepts: int = 5,
        num_outputs: int = 1,
        hidden: Sequence[int] = (800, 100),
        dropout: float = 0.02,
        decoder_output_relu: bool | None = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_concepts", num_concepts),
            ("num_outputs", num_outputs),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        hidden = tuple(hidden)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in hidden):
            raise ValueError(f"`hidden` must be a sequence of positive ints, got {hidden!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be a number in [0, 1), got {dropout!r}")
        dims = (in_features, *hidden, num_concepts)
        self.dims = dims
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        # decoder[0] maps k back to the last hidden size, decoder[-1] ends at D
        self.decoder = nn.ModuleList(nn.Linear(b, a) for a, b in reversed(list(itertools.pairwise(dims))))
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(num_concepts, num_outputs)
        flag = _UNDECIDED if decoder_output_relu is None else (_RELU if decoder_output_relu else _IDENTITY)
        self.register_buffer("decoder_output_relu", torch.tensor(flag, dtype=torch.int8))

    @property
    def num_concepts(self) -> int:
        return self.dims[-1]

    def encode(self, x: Tensor) -> Tensor:
        """The concepts ``h ≥ 0`` (B, k)."""
        for i, layer in enumerate(self.encoder):
            x = F.relu(layer(x))
            if i == 0:
                x = self.dropout(x)
        return x

    def decode(self, h: Tensor) -> Tensor:
        """The reconstruction ``x̂`` (B, D); an undecided ``"auto"`` output activation counts as identity."""
        last = len(self.decoder) - 1
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < last or int(self.decoder_output_relu) == _RELU:
                h = F.relu(h)
        return h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.encode(x)
        return h, self.decode(h), self.head(h)

    def contributions(self, h: Tensor) -> Tensor:
        """Each concept's contribution ``h_j · W_{c,j}`` (B, n_out, k); summed over j plus the bias it is ŷ."""
        return h[:, None, :] * self.head.weight[None]


# ----------------------------------------------------------------------------------------------------------
# Feature tap and the image-to-concept model
# ----------------------------------------------------------------------------------------------------------


def _final_linear(model: nn.Module) -> nn.Module:
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    if found is None:
        raise ValueError(
            f"`layer=None` taps the input of the backbone's final nn.Linear, but {type(model).__name__} has none; "
            "pass `layer=` by name"
        )
    return found


def pool_features(features: Tensor) -> Tensor:
    """(B, C, h, w) maps are averaged over space, (B, N, C) token sequences over tokens; (B, D) passes."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 2:
        return features
    raise ValueError(
        f"the tapped features must be (B, D), (B, N, C) or (B, C, h, w), got {describe(features)}"
    )


class _FeatureTap:
    """Keeps the input (``pre=True``) or output of a module during one forward."""

    def __init__(self, module: nn.Module, pre: bool) -> None:
        self.module = module
        self.pre = pre
        self.value: Tensor | None = None

    def _store(self, value: Any) -> None:
        first = value[0] if isinstance(value, (tuple, list)) else value
        if not isinstance(first, Tensor):
            raise TypeError(f"the tapped layer must produce a tensor, got {describe(first)}")
        self.value = first

    @contextlib.contextmanager
    def capturing(self) -> Iterator[_FeatureTap]:
        self.value = None
        if self.pre:
            handle = self.module.register_forward_pre_hook(lambda _m, args: self._store(args))
        else:
            handle = self.module.register_forward_hook(lambda _m, _args, out: self._store(out))
        try:
            yield self
        finally:
            handle.remove()

    def features(self) -> Tensor:
        if self.value is None:
            raise ValueError("the XNN's feature layer was not called by the backbone's forward")
        return pool_features(self.value)


class ConceptModel(nn.Module):
    """Image to concepts ``h`` (B, k): the backbone up to the tap, pooling, then the XNN encoder.

    The backbone is held as ``model``, so ``layer="auto"`` of Grad-CAM finds its last stage. Any Captum-style
    method explains concept ``j`` with ``target=j``. Built by :meth:`XNN.concept_model`.
    """

    def __init__(self, backbone: nn.Module, network: XNNNetwork, tap: _FeatureTap) -> None:
        super().__init__()
        self.model = backbone
        self.network = network
        self._tap = tap

    def forward(self, inputs: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with self._tap.capturing() as tap:
            self.model(inputs, *args, **kwargs)
        return self.network.encode(tap.features().float())


# ----------------------------------------------------------------------------------------------------------
# Distributed helpers (no-ops in one process)
# ----------------------------------------------------------------------------------------------------------


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if _world_size() > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


def _broadcast_from_rank_zero(module: nn.Module) -> None:
    if _world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


# ----------------------------------------------------------------------------------------------------------
# The LightningModule
# ----------------------------------------------------------------------------------------------------------


def _check_number(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    check_positive(name, value, allow_zero=allow_zero)
    return float(value)


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


class XNN(L.LightningModule):
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
        _check_count("num_concepts", num_concepts, 1)
        _check_count("pretrain_epochs", pretrain_epochs, 0)
        if not isinstance(centre_biases, bool):
            raise TypeError(f"`centre_biases` must be a bool, got {describe(centre_biases)}")
        _check_count("lr_step", lr_step, 1)
        _check_number("q", q, allow_zero=False)
        for name, value in (("alpha_pred", alpha_pred), ("alpha_rec", alpha_rec), ("alpha_pt", alpha_pt)):
            _check_number(name, value)
        _check_number("lr", lr, allow_zero=False)
        _check_number("weight_decay", weight_decay)
        _check_number("lr_gamma", lr_gamma, allow_zero=False)
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
            _check_count("feature_dim", feature_dim, 1)
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
        both float32 and without gradients."""
        with self._tap.capturing() as tap:
            logits = logits_of(self.backbone(inputs, **kwargs))
        features = tap.features().float()
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"the tapped features have {features.shape[1]} dimensions, the XNN expects {self.feature_dim}"
            )
        if logits.ndim != 2 or int(self.targets.max()) >= logits.shape[1]:
            raise ValueError(
                f"the backbone must return (B, K) logits with K > {int(self.targets.max())}, got {describe(logits)}"
            )
        return features, logits.float().index_select(1, self.targets)

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
            weight = self.network.head.weight.float()
            pull = sum(
                pull_away_term(h.float() * weight[c] + _PT_OFFSET, hp.pt_mode) for c in range(weight.shape[0])
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
        with torch.enable_grad(), preserved_state(self.network):
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

    # -- explanations ----------------------------------------------------------------------------------------

    def concept_model(self) -> ConceptModel:
        """An ``nn.Module`` from inputs to the concepts h (B, k) (backbone to the tap, pooling, encoder), sharing
        this module's weights. Explain concept j with any Captum-style method and ``target=j``."""
        model = ConceptModel(self.backbone, self.network, self._tap)
        model.training = self.training  # the flag only: the wrapped modules keep their own modes
        return model

    def concept_heatmaps(
        self,
        images: Tensor,
        method: str | Callable[[Tensor, Tensor], Tensor] = "gradcam",
        layer: str | int | nn.Module | None = None,
        internal_batch_size: int | None = None,
        **method_kwargs: Any,
    ) -> Tensor:
        """One heatmap per concept (B, k, H, W), ≥ 0 and not normalised; inactive concepts (h_j = 0) get zeros.

        ``method``: ``"gradcam"`` (the library's batched Grad-CAM on :meth:`concept_model` at ``layer``, by
        default ``heatmap_layer``), ``"igos"`` (I-GOS on the concept activation with ``score="logit"``;
        ``method_kwargs`` go to :meth:`~lightning_xai.attr.IGOS.attribute`), or a callable
        ``(inputs, target) -> maps``. Runs in eval mode; the module's state is restored afterwards.
        """
        with preserved_state(self, eval_mode=True):
            attribution = XNNConceptAttribution(self.concept_model())
            return attribution.attribute(
                images,
                method=method,
                layer=self.hparams.heatmap_layer if layer is None else layer,
                internal_batch_size=internal_batch_size,
                **method_kwargs,
            )

    def concept_order(self, head: int = 0) -> Tensor:
        """Concept indices sorted by ``mean_contribution[head]``, largest first."""
        return torch.argsort(self.mean_contribution[head], descending=True, stable=True)


@torch.no_grad()
def _centre_biases(layer: nn.Linear, inputs: Tensor) -> None:
    """Data-dependent bias initialisation: each unit's pre-activation is centred on its median over ``inputs``,
    so every ReLU unit starts active on about half of the data (none starts dead)."""
    layer.bias.sub_((inputs @ layer.weight.T + layer.bias).median(dim=0).values)


def _epochs(total: int, epochs: int, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """Index chunks of ``batch_size`` rows of a fresh random permutation per epoch."""
    for _ in range(epochs):
        order = torch.randperm(total, device=device)
        yield from order.split(max(batch_size, 1))


def _layer_width(model: nn.Module, module: nn.Module) -> int | None:
    for attr in ("out_features", "out_channels", "num_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    try:
        stages = list_stages(model)
    except ValueError:
        return None
    for stage in stages:
        if stage.module is module:
            return stage.channels
    return None


def _resolve_targets(target_class: object, backbone: nn.Module, num_classes: int | None) -> list[int]:
    if target_class == "all":
        out = getattr(_final_linear_or_none(backbone), "out_features", None) or num_classes
        if out is None:
            raise ValueError(
                "`target_class='all'` needs `num_classes=` when the backbone has no final nn.Linear"
            )
        return list(range(int(out)))
    if isinstance(target_class, int) and not isinstance(target_class, bool):
        targets = [target_class]
    elif (
        isinstance(target_class, (list, tuple))
        and target_class
        and all(isinstance(t, int) and not isinstance(t, bool) for t in target_class)
    ):
        targets = list(target_class)
    else:
        raise ValueError(
            f"`target_class` must be an int, a non-empty list of ints or 'all', got {target_class!r}"
        )
    if min(targets) < 0 or len(set(targets)) != len(targets):
        raise ValueError(
            f"`target_class` must hold distinct non-negative class indices, got {target_class!r}"
        )
    return targets


def _final_linear_or_none(model: nn.Module) -> nn.Module | None:
    try:
        return _final_linear(model)
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------------------
# The retry heuristic
# ----------------------------------------------------------------------------------------------------------


def balance_check(mean_contribution: Tensor, min_positive: int = 2, min_ratio: float = 0.3) -> bool:
    """Whether no single concept carries the prediction: for every head, with the mean contributions sorted in
    descending order ``m_(1) ≥ m_(2) ≥ …``, at least ``min_positive`` are > 0, ``m_(1) > 0`` and
    ``m_(2) / m_(1) ≥ min_ratio``.

    Example:
        >>> import torch
        >>> balance_check(torch.tensor([[1.0, 0.5, -0.2]])), balance_check(torch.tensor([[1.0, 0.1, 0.0]]))
        (True, False)
    """
    m = torch.as_tensor(mean_contribution, dtype=torch.float64)
    if m.ndim == 1:
        m = m[None]
    for row in m:
        ordered = row.sort(descending=True).values
        if ordered[0] <= 0 or int((row > 0).sum()) < min_positive:
            return False
        if ordered.numel() < 2 or ordered[1] / ordered[0] < min_ratio:
            return False
    return True


def fit_xnn(
    module_factory: Callable[..., XNN],
    trainer_factory: Callable[[], L.Trainer],
    datamodule: L.LightningDataModule | None = None,
    max_attempts: int = 5,
    min_positive: int = 2,
    min_ratio: float = 0.3,
    recon_growth: float = 1.2,
    pt_decay: float = 0.8,
    *,
    alpha_rec: float = 10.0,
    alpha_pt: float = 10.0,
    **fit_kwargs: Any,
) -> tuple[XNN, list[dict[str, Any]]]:
    """Train XNNs until one passes :func:`balance_check`, as in the reference (up to ``max_attempts``).

    Attempt ``t`` (0-based) calls ``module_factory(alpha_rec=alpha_rec·recon_growth^t, alpha_pt=alpha_pt·pt_decay^t)``
    and ``trainer_factory()``, fits from scratch (pretraining included) and checks the module's
    ``mean_contribution``. Returns the first module that passes, otherwise the last one, and the attempt log
    (one dict per attempt: ``attempt``, ``alpha_rec``, ``alpha_pt``, ``mean_contribution``, ``passed``).
    ``fit_kwargs`` go to ``trainer.fit`` (e.g. ``train_dataloaders=``).
    """
    _check_count("max_attempts", max_attempts, 1)
    _check_count("min_positive", min_positive, 1)
    _check_number("min_ratio", min_ratio)
    _check_number("recon_growth", recon_growth, allow_zero=False)
    _check_number("pt_decay", pt_decay, allow_zero=False)
    log: list[dict[str, Any]] = []
    module = None
    for attempt in range(max_attempts):
        rec, pt = alpha_rec * recon_growth**attempt, alpha_pt * pt_decay**attempt
        module = module_factory(alpha_rec=rec, alpha_pt=pt)
        if not isinstance(module, XNN):
            raise TypeError(f"`module_factory` must return an XNN, got {describe(module)}")
        trainer = trainer_factory()
        if datamodule is not None:
            fit_kwargs = {**fit_kwargs, "datamodule": datamodule}
        trainer.fit(module, **fit_kwargs)
        mean = module.mean_contribution.detach().cpu().clone()
        passed = balance_check(mean, min_positive, min_ratio)
        log.append(
            {
                "attempt": attempt,
                "alpha_rec": rec,
                "alpha_pt": pt,
                "mean_contribution": mean,
                "passed": passed,
            }
        )
        if passed:
            break
    assert module is not None
    return module, log
