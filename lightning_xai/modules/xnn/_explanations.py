"""The concept explanations of :class:`~lightning_xai.modules.xnn.XNN` (heatmaps, concept order)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...attr.xnn import XNNConceptAttribution
from ...explain import preserved_state
from .concepts import ConceptModel


class _ConceptExplanations:
    """The explanation methods of :class:`~lightning_xai.modules.xnn.XNN`, which inherits them."""

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
