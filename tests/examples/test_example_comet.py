"""The COMET example runs end to end in its smoke mode."""

from __future__ import annotations


def test_comprehensive_attribution_example_smoke(run_example, tmp_path):
    result = run_example("comprehensive_attribution.py", tmp_path)
    png = tmp_path / "comet_masks.png"
    assert png.exists() and png.stat().st_size > 1000
    assert "PxAP" in result.stdout and "detector accuracy on the complement" in result.stdout
