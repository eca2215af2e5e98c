"""The concept explanations of :class:`~lightning_xai.modules.xnn.XNN` (heatmaps, concept order)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..._checks import check_inputs_on_model_device, check_nonempty_batch
from ...attr.xnn import XNNConceptAttribution
from ...explain import preserved_state
from ...models import layer_name, resolve_layer
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
        layer = self.hparams.heatmap_layer if layer is None else layer
        with preserved_state(self, eval_mode=True):
            if method == "gradcam" and isinstance(images, Tensor) and images.ndim == 4:
                self._check_heatmap_layer(images, layer)
            attribution = XNNConceptAttribution(self.concept_model())
            return attribution.attribute(
                images,
                method=method,
                layer=layer,
                internal_batch_size=internal_batch_size,
                **method_kwargs,
            )

    @torch.no_grad()
    def _check_heatmap_layer(self, images: Tensor, layer: str | int | nn.Module) -> None:
        """Grad-CAM needs a layer that the concepts depend on: one that runs before the feature tap. With an
        earlier tap (e.g. ``layer="layer3"``) the default last stage runs after it, and autograd would only say
        that the layer "appears to not have been used in the graph"; one image's forward tells."""
        check_nonempty_batch("images", images)
        check_inputs_on_model_device("images", images, self.backbone)
        module = layer if isinstance(layer, nn.Module) else resolve_layer(self.backbone, layer)
        after_tap: list[bool] = []
        # registered before the tap's own hook, so that the tapped layer itself counts as before the tap
        handle = module.register_forward_hook(lambda *_: after_tap.append(self._tap.value is not None))
        try:
            with self._tap.capturing():
                self.backbone(images[:1])
        finally:
            handle.remove()
        if after_tap and all(after_tap):
            raise ValueError(
                f"the heatmap layer {layer_name(self.backbone, module)!r} runs after the XNN's feature layer "
                f"{layer_name(self.backbone, self._tap.module)!r}, so the concepts do not depend on it; pass "
                "`layer=` (or `heatmap_layer=`) naming a spatial layer at or before the feature layer"
            )

    def concept_order(self, head: int = 0) -> Tensor:
        """Concept indices sorted by ``mean_contribution[head]``, largest first."""
        return torch.argsort(self.mean_contribution[head], descending=True, stable=True)
