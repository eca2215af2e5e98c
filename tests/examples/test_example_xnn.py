"""The XNN concepts example runs end to end in its smoke mode."""

from __future__ import annotations


def test_xnn_concepts_example_smoke(run_example, tmp_path):
    result = run_example("xnn_concepts.py", tmp_path)
    png = tmp_path / "xnn_concepts.png"
    assert png.exists() and png.stat().st_size > 1000
    assert "faithfulness R²" in result.stdout and "attempt 0" in result.stdout
