import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "score_explanations.py"


def test_score_explanations_smoke(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLE), "--smoke", "--out", str(tmp_path)], check=True, timeout=300)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores) == {"grad_cam", "random"}
    for values in scores.values():
        assert set(values) == {"pointing_game", "energy_pointing_game", "sparseness", "deletion", "insertion"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert (tmp_path / "deletion_curves.png").stat().st_size > 1000
