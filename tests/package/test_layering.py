"""Dependencies run one way, with the data: every import of a subpackage points to its own layer or below.

    _checks, _deprecation, _options, _registry  <-  models, explain, data, losses  <-  heads, attr, metrics  <-  viz
                                                <-  modules, callbacks  <-  cli, demo (and the package itself)

``viz`` sits below the callbacks because they log the overlays it draws. The imports are read from the source
(module level and inside functions alike), so a lazy import cannot hide a dependency; the only exceptions are
the deprecated drawing methods of the SAG result, listed below by file and target.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_xai

PACKAGE = Path(lightning_xai.__file__).parent

LAYERS: dict[str, int] = {
    "_checks": 0,
    "_deprecation": 0,
    "_options": 0,
    "_registry": 0,
    "models": 1,
    "explain": 1,
    "data": 1,
    "losses": 1,
    "heads": 2,
    "attr": 2,
    "metrics": 2,
    "viz": 3,
    "modules": 4,
    "callbacks": 4,
    "cli": 5,
    "cli_explain": 5,
    "demo": 5,
}

# (importing file, imported part): deprecated shims that keep an earlier method working until it is removed.
DEPRECATED_SHIMS = {("attr/sag/result.py", "viz")}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def _part(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


_PARTS = {
    p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
}


def _relative_base(path: Path, level: int) -> list[str]:
    """The package that ``from <level dots> import`` in ``path`` starts from, as name pieces."""
    package = ["lightning_xai", *path.relative_to(PACKAGE).parent.parts]
    return package[: len(package) - level + 1]


def _imported_parts(path: Path) -> set[str]:
    """The top-level parts of lightning_xai that ``path`` imports (absolute or relative, at any depth)."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _relative_base(path, node.level)
                module = ".".join([*base, node.module] if node.module else base)
                names = [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "lightning_xai" and len(pieces) > 1 and pieces[1] in _PARTS:
                parts.add(pieces[1])
    return parts


def _resolves(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_relative_imports_name_modules_that_exist(path):
    """Checked without running the code: a lazy import inside a function fails only when it runs."""
    names = [
        ".".join([*_relative_base(path, node.level), node.module])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level and node.module
    ]
    assert all(_resolves(name) for name in names), [name for name in names if not _resolves(name)]


def test_every_part_of_the_package_has_a_layer():
    assert {_part(p) for p in _modules()} == set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_to_the_same_layer_or_below(path):
    own = _part(path)
    upward = {
        part
        for part in _imported_parts(path) - {own}
        if LAYERS[part] > LAYERS[own] and (str(path.relative_to(PACKAGE)), part) not in DEPRECATED_SHIMS
    }
    assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)} from a higher layer"


def test_parts_of_one_layer_do_not_import_each_other_both_ways():
    edges = {
        (_part(p), part)
        for p in _modules()
        for part in _imported_parts(p)
        if part != _part(p) and (str(p.relative_to(PACKAGE)), part) not in DEPRECATED_SHIMS
    }
    both_ways = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not both_ways, f"parts that import each other: {both_ways}"


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh package state: an import cycle or an order dependence fails."""
    names = [
        ".".join(["lightning_xai", *p.relative_to(PACKAGE).with_suffix("").parts]).removesuffix(".__init__")
        for p in _modules()
    ]
    script = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'lightning_xai']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        print(f'{name}: {type(error).__name__}: {error}')\n"
    )
    # two halves in two concurrent processes: the machine has two cores and the rest of the suite waits
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script.replace(repr(names), repr(half))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for half in (names[::2], names[1::2])
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert stdout == "", stdout
