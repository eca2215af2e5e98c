"""The ADVISE example runs end to end in its smoke mode."""

from __future__ import annotations


def test_advise_example_smoke(run_example, tmp_path):
    result = run_example("advise.py", tmp_path)
    png = tmp_path / "advise_overlay.png"
    assert png.exists() and png.stat().st_size > 1000
    for line in ("chosen g=", "ADVISE    AVX", "Grad-CAM  AVX"):
        assert line in result.stdout
