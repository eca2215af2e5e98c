"""The explanation-callbacks example runs end to end in its smoke mode."""

from __future__ import annotations


def test_explanation_callbacks_example_smoke(run_example, tmp_path):
    result = run_example("explanation_callbacks.py", tmp_path)
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert (log_dir / "saliency" / "epoch=0.png").stat().st_size > 1000
    assert (log_dir / "saliency_ig" / "epoch=0.png").stat().st_size > 1000
    assert "epoch 0: deletion" in result.stdout
