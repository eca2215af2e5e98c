"""One registry of short names for classes given by dotted path: the attribution methods and the metrics."""

from __future__ import annotations

import importlib

from ._checks import describe


class NameRegistry:
    """Short names for classes, resolved lazily by their dotted paths (nothing is imported until asked).

    ``names`` is the plain ``{name: "package.module.Class"}`` dict; :meth:`resolve` also takes a dotted path or a
    class, and an unknown name is a ``ValueError`` that lists the known ones.
    """

    def __init__(self, kind: str, names: dict[str, str], example: str) -> None:
        self.kind = kind
        self.names = names
        self.example = example

    def register(self, name: str, class_path: str) -> None:
        """Make ``name`` a short name for the class at ``class_path`` (``"package.module.Class"``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, got {describe(name)}")
        if not isinstance(class_path, str) or "." not in class_path:
            raise ValueError(f"`class_path` must be a dotted path 'package.module.Class', got {class_path!r}")
        self.names[name] = class_path

    def resolve(self, spec: str | type) -> type:
        if isinstance(spec, type):
            return spec
        if not isinstance(spec, str):
            raise TypeError(
                f"a {self.kind} must be a name, a dotted class path or a class, got {describe(spec)}"
            )
        path = self.names.get(spec, spec)
        module_name, _, class_name = path.rpartition(".")
        if not module_name:
            raise ValueError(
                f"unknown {self.kind} {spec!r}: use one of {sorted(self.names)} or a dotted class path such as "
                f"{self.example!r}"
            )
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"cannot import {self.kind} {path!r} ({error}); short names: {sorted(self.names)}"
            ) from error
