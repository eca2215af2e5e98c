"""The loss tap: how callbacks reweight samples and add loss terms in a module they do not own.

A Lightning callback cannot return a new loss. The user's module keeps its loss function as an attribute
(``criterion``, ``loss_fn`` or ``loss_func``, or another name given as ``loss_attr``); a callback that must
change the loss *acquires* the module's :class:`LossTap` in ``setup``. The first acquisition wraps that attribute;
later ones (other callbacks) share the same tap. While any owner has a training batch open, each call of the
criterion is replaced by

``loss = Σ_i w_i (ℓ_i + Σ_terms t_i) / D + Σ_terms t``

where ``ℓ_i`` are the per-sample losses (``reduction="none"``, summed over any extra dimensions), ``w_i`` the
product of the sample weights the owners published for this batch, ``t_i`` per-sample auxiliary terms (MHEX
deep supervision), ``t`` scalar terms, and ``D`` the denominator of the criterion's own reduction, so that with
all weights 1 and no terms the value is the criterion's own. Validation, test and predict calls, and training
calls with nothing published, return the criterion's own value untouched.

Supported criteria:

- ``torch.nn`` loss modules (subclasses of ``torch.nn.modules.loss._Loss`` with a ``reduction`` of ``"mean"``,
  ``"sum"`` or, for ``KLDivLoss``, ``"batchmean"``): ``CrossEntropyLoss`` and ``NLLLoss`` with ``weight``,
  ``ignore_index``, ``label_smoothing`` and class-index or probability targets, ``BCEWithLogitsLoss`` with
  ``weight`` / ``pos_weight``, ``BCELoss``, ``MSELoss``, ``L1Loss``, ``SmoothL1Loss``, ``HuberLoss``, ... .
  Module criteria are tapped with a forward hook, so the module tree and ``state_dict`` do not change.
- functions with a ``reduction`` argument (``torch.nn.functional.cross_entropy`` and friends), tapped by
  replacing the attribute with a wrapper.
- modules that mix in :class:`SampleWeightedLossMixin` and call :meth:`~SampleWeightedLossMixin.
  sample_weighted_loss` themselves.
- **inline losses**: a module with none of the above (``return F.cross_entropy(self(x), y)`` in
  ``training_step``, or ``nn.CrossEntropyLoss()(logits, y)`` created there, or a Hugging Face model that
  computes its loss from ``labels=``). ``training_step`` then runs inside a
  :class:`torch.overrides.TorchFunctionMode`, during training batches only, that intercepts the loss
  functions in :data:`INLINE_LOSSES` (the ``torch.nn`` loss modules call them). A call is *the* training loss
  when its input has the batch's size and its target equals the batch's labels (or their one-hot / soft
  form); other calls pass through untouched. Exactly one such call per training step is expected: a second
  one raises a ``RuntimeError`` that says how to choose (``loss_attr=`` or the mixin). A step with none leaves
  the loss as it is, and the callbacks say so after the first batch (MHEX then adds its heads' cross-entropy
  to the loss ``training_step`` returns).

Criteria that cannot give per-sample losses raise a ``TypeError`` at ``setup`` that says what to change.
"""

from __future__ import annotations

from .inline import INLINE_LOSSES
from .per_sample import LossParts, PerSampleLoss
from .tap import LOSS_ATTRS, LossTap, SampleWeightedLossMixin, find_loss_tap
from .weights import consistency_weights

__all__ = [
    "INLINE_LOSSES",
    "LOSS_ATTRS",
    "LossParts",
    "LossTap",
    "PerSampleLoss",
    "SampleWeightedLossMixin",
    "consistency_weights",
    "find_loss_tap",
]
