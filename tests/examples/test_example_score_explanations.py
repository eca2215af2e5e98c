"""The score-explanations example runs end to end in its smoke mode."""

from __future__ import annotations

import json


def test_score_explanations_smoke(run_example, tmp_path):
    run_example("score_explanations.py", tmp_path)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores) == {"grad_cam", "random"}
    for values in scores.values():
        assert set(values) == {"pointing_game", "energy_pointing_game", "sparseness", "deletion", "insertion"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert (tmp_path / "deletion_curves.png").stat().st_size > 1000
