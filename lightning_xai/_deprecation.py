"""One way to say that a name moved: a ``DeprecationWarning`` naming the replacement."""

from __future__ import annotations

import warnings


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both as the user writes them)."""
    warnings.warn(f"`{old}` is deprecated: use `{new}`", DeprecationWarning, stacklevel=stacklevel)
