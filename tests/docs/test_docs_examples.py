"""Every fenced ``python`` block of README.md and docs/**/*.md runs as written, in page order, each page in one
namespace (a block may use what an earlier block of its page defined), in a temporary working directory.

Blocks that show a signature or a fragment rather than a program are fenced as ``text``. The only shrinking is
this fixture's: every ``lightning.Trainer`` runs one epoch of at most two batches per loop, so the training
scripts of the pages run as they are written, in seconds.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture
def short_trainer_runs(monkeypatch):
    original = L.Trainer.__init__

    def init(self, *args, **kwargs):
        kwargs.update(
            max_epochs=1,
            max_steps=-1,
            limit_train_batches=2,
            limit_val_batches=2,
            limit_test_batches=2,
            limit_predict_batches=2,
            enable_progress_bar=False,
        )
        original(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", init)


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch, short_trainer_runs):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line, code in _blocks(page):
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)


def test_the_pages_have_examples():
    assert sum(len(_blocks(p)) for p in PAGES) >= 15
