"""I-GOS and iGOS++: saliency masks optimised with integrated gradients (``docs/methods/igos.md``).

Both methods look for a low-resolution mask ``M`` (1 = keep a pixel, 0 = show the baseline there) whose
deletion lowers the target's score, descending along an *integrated* gradient: the gradient averaged over the
straight path from the all-baseline image to the current masked image. iGOS++ optimises a deletion and an
insertion mask together and regularises with a bilateral total variation that lets the mask jump at image
edges.

The whole batch is one optimisation. Per iteration, the model inputs are the rows (image, term, path point),
flattened image-major and pushed through the model in chunks of ``internal_batch_size`` rows; every image keeps
its own step size, L1 weight and convergence flag, and an image that has finished costs nothing more. The
noise is drawn per iteration and term from one generator and shared by all images, so a result depends only on
the seed and the image, never on the batch it came in or on the chunk size.

- ``options``: the settings as frozen dataclasses, checked once;
- ``regularisers``: area, total variation, bilateral total variation;
- ``objective``: the batched objective and its gradient;
- ``optimise``: the descent (Armijo line search or Nesterov momentum);
- ``methods``: the Captum attribution classes.
"""

from .methods import IGOS, IGOSPlusPlus
from .options import DEFAULT_LINE_SEARCH, IGOSOptions, IGOSPlusPlusOptions, LineSearch, Optimizer

__all__ = [
    "DEFAULT_LINE_SEARCH",
    "IGOS",
    "IGOSOptions",
    "IGOSPlusPlus",
    "IGOSPlusPlusOptions",
    "LineSearch",
    "Optimizer",
]
