"""The structured attention graph example runs end to end in its smoke mode."""

from __future__ import annotations


def test_structured_attention_graph_example_smoke(run_example, tmp_path):
    result = run_example("structured_attention_graph.py", tmp_path)
    pngs = sorted(tmp_path.glob("sag_*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 1000 for p in pngs)
    assert result.stdout.count("graph nodes") == 4
    assert "wrote 4 graphs" in result.stdout
