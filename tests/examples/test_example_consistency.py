"""The consistency-reweighting example runs end to end in its smoke mode."""

from __future__ import annotations


def test_consistency_reweighting_example_smoke(run_example, tmp_path):
    result = run_example("consistency_reweighting.py", tmp_path)
    assert "bias-conflicting accuracy" in result.stdout and "1 refresh(es)" in result.stdout
    rows = (tmp_path / "ece_weights.csv").read_text().splitlines()
    assert rows[0] == "index,label,inconsistency,weight" and len(rows) == 17
    weights = [float(row.split(",")[3]) for row in rows[1:]]
    assert all(0.1 - 1e-6 <= w <= 5.0 + 1e-6 for w in weights)
