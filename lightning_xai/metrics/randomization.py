"""Sanity check of explanations by cascading model-parameter randomisation (Adebayo et al., arXiv 1810.03292)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .functional.randomization import (
    ExplainFn,
    MapNormalization,
    Order,
    _check_randomization_args,
    _check_similarities,
    _entry_names,
    _randomization_compute,
    _randomization_update,
    randomization_layers,
)


class ModelRandomizationCheck(Metric):
    """Cascading model-parameter randomisation check (Adebayo et al., *Sanity Checks for Saliency Maps*).

    For each batch, the explanation ``e_0 = explain_fn(model, inputs, target)`` of the trained model is compared
    with the explanations ``e_ℓ`` of a model whose layers are re-initialised one after the other, from the output
    towards the input (``order="top_down"``, Quantus' ``MPRT`` default) or the other way round. An explanation
    that depends on what the model learned changes: lower similarity is better.

    - ``explain_fn(model, inputs, target)`` is any attribution callable returning (B,H,W), (B,1,H,W) or
      (B,C,H,W) maps (channels are reduced by ``channel_reduction``). Gradient explainers run under
      ``torch.enable_grad()``; under ``torch.inference_mode`` (Lightning's validate/test loops by default) the
      metric raises and asks for ``Trainer(inference_mode=False)``.
    - The cascade runs on a deep copy of ``model``; ``inplace=True`` randomises the model itself after saving
      every parameter and buffer on CPU, and restores them at the end, also when ``explain_fn`` raises. Either
      way the user's weights end bitwise unchanged. A copy of a ``LightningModule`` copies what it references:
      pass the network itself, or use ``inplace=True``.
    - Layers are the modules that own parameters and define ``reset_parameters`` (see
      :func:`~lightning_xai.metrics.functional.randomization.randomization_layers`), normalisation layers
      included (their running statistics are reset too) unless ``skip_norm_layers``; ``layers="blocks"`` takes
      top-level blocks, or pass a list of module names.
    - Step ℓ re-initialises its layers on a CPU copy under a CPU generator seeded with ``seed + ℓ``, so the
      weights are the same on every device and rank, and the global RNG is left untouched.
    - Maps are made absolute (``abs``) and divided by their per-sample maximum (``normalize="max"``), then
      compared per sample with ``similarity``: ``"spearman"`` (as ``scipy.stats.spearmanr``; a constant map
      gives 0) and/or ``"ssim"`` (scikit-image conventions, as Quantus).

    ``compute()`` returns ``{similarity: {entry: mean}}``. The entries are ``"original"`` (the explanation
    recomputed on the unchanged model, ≈ 1 for a deterministic explainer), one per randomised layer in cascade
    order (only the fully randomised model with ``skip_layers=True``), and ``"last"`` (the fully randomised
    model). Values lie in [−1, 1]. ``layer_names`` lists the entries.

    States: ``sim_sum_<similarity>`` (one sum per entry) and ``count``, all sum-reduced.

    Example:
        >>> import torch
        >>> from lightning_xai.metrics import ModelRandomizationCheck
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
        >>> def saliency(model, inputs, target):
        ...     inputs = inputs.clone().requires_grad_()
        ...     score = model(inputs).gather(1, target[:, None]).sum()
        ...     return torch.autograd.grad(score, inputs)[0] * inputs
        >>> metric = ModelRandomizationCheck(model, saliency, similarity="spearman")
        >>> metric.layer_names
        ['original', '3', '0']
        >>> metric.update(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
        >>> result = metric.compute()
        >>> list(result["spearman"])
        ['original', '3', '0', 'last']
        >>> round(result["spearman"]["original"].item(), 4)
        1.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    model: nn.Module
    count: Tensor

    def __init__(
        self,
        model: nn.Module,
        explain_fn: ExplainFn,
        similarity: str | Sequence[str] = ("spearman", "ssim"),
        order: Order = "top_down",
        layers: str | Sequence[str] | None = None,
        seed: int = 42,
        abs: bool = True,
        normalize: MapNormalization = "max",
        skip_layers: bool = False,
        skip_norm_layers: bool = False,
        inplace: bool = False,
        *,
        channel_reduction: str = "sum",
        force_eval: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.similarities = _check_similarities(similarity)
        _check_randomization_args(explain_fn, seed, normalize, channel_reduction)
        self.steps = randomization_layers(model, layers, order, skip_norm_layers)
        # Kept out of the module tree: the metric must not move, save or count the user's model.
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "explain_fn", explain_fn)
        self.seed = seed
        self.abs = abs
        self.normalize = normalize
        self.skip_layers = skip_layers
        self.inplace = inplace
        self.channel_reduction = channel_reduction
        self.force_eval = force_eval
        self.layer_names = _entry_names(self.steps, skip_layers)
        for name in self.similarities:
            self.add_state(f"sim_sum_{name}", torch.zeros(len(self.layer_names)), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, inputs: Tensor, target: object = None) -> None:
        """Explain ``inputs`` for ``target`` (int, (B,) tensor, or None = the model's argmax) along the cascade."""
        sums, count = _randomization_update(
            self.model,
            self.explain_fn,
            inputs,
            target,
            self.steps,
            similarities=self.similarities,
            seed=self.seed,
            use_abs=self.abs,
            normalize=self.normalize,
            channel_reduction=self.channel_reduction,
            skip_layers=self.skip_layers,
            inplace=self.inplace,
            force_eval=self.force_eval,
        )
        for name, total in sums.items():
            state = getattr(self, f"sim_sum_{name}")
            setattr(self, f"sim_sum_{name}", state + total.to(state))
        self.count += count

    def compute(self) -> dict[str, dict[str, Tensor]]:
        sums = {name: getattr(self, f"sim_sum_{name}") for name in self.similarities}
        return _randomization_compute(sums, self.count, self.layer_names)
