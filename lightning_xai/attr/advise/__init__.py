"""ADVISE: adaptive feature relevance and visual explanations (Dehshibi, Ashtari-Majlan, Adhane, Masip;
arXiv 2203.01289), as a Captum layer attribution. Documented in ``docs/methods/advise.md``.

Per image, at a feature layer ``A`` (C × h × w):

1. every channel's activation values get a locally adaptive kernel density estimate (:mod:`.kde`) on
   ``linspace(0, 1, h·w)``; its number of peaks ``n_k`` is the channel's relevance descriptor;
2. the channels are grouped by ``n_k``; each group ``g`` gets a Grad-CAM of the explained class ``c1`` and of the
   runner-up ``c2`` with the whole-layer weights of the **softmax probability** restricted to the group's
   channels, ``L_g^c = ReLU(Σ_{k: n_k = g} α_k^c A_k)``, min-max rescaled;
3. the map returned is the group with the best AVX (:class:`~lightning_xai.metrics.AVX`, ADVISE's evaluation
   protocol; its scoring is reused, not copied), or with ``selection="largest_group"`` the group with the most
   channels, which needs no extra model calls.
"""

from .groups import ADVISEDetails, group_cams
from .method import ADVISE

__all__ = ["ADVISE", "ADVISEDetails", "group_cams"]
