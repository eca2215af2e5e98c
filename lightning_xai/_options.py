"""The base of the settings objects: frozen dataclasses, each field checked once in ``__post_init__``."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ._checks import describe

_O = TypeVar("_O", bound="Options")


class Options:
    """Mixin of the frozen settings dataclasses (``IGOSOptions``, ``ConsistencyOptions``, ...): a checked copy
    with some fields changed, and plain values for logs and configs."""

    def replace(self: _O, **changes: Any) -> _O:
        """A copy with ``changes`` applied (and checked); an unknown name is a ``TypeError`` that lists the
        fields."""
        names = [field.name for field in dataclasses.fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option {', '.join(map(repr, unknown))}; the options are {names}"
            )
        return dataclasses.replace(self, **changes) if changes else self  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def resolve(cls: type[_O], options: object, overrides: dict[str, Any]) -> _O:
        """``options`` (exactly this class, or None for the defaults) with the keyword ``overrides`` of a call."""
        if options is None:
            options = cls()
        elif type(options) is not cls:
            raise TypeError(f"`options` must be a {cls.__name__} or None, got {describe(options)}")
        return options.replace(**overrides)  # type: ignore[union-attr]
