"""The MHEX callback example runs end to end in its smoke mode."""

from __future__ import annotations


def test_mhex_callback_example_smoke(run_example, tmp_path):
    result = run_example("mhex_callback.py", tmp_path)
    png = tmp_path / "mhex_overlay.png"
    assert png.exists() and png.stat().st_size > 1000
    assert "pointing game" in result.stdout
