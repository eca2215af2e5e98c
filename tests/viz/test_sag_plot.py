"""Drawing structured attention graphs: the figure, the PNG (its pixels), DOT text (the method's specification)."""

from __future__ import annotations

import re
import sys

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_xai.attr import StructuredAttentionGraph
from lightning_xai.data import ShapesDataset
from lightning_xai.viz import render_sag, sag_to_dot, save_sag_png
from lightning_xai.viz.sag import node_thumbnail

matplotlib.use("Agg")

GRID = 6


class TwoRoutes(nn.Module):
    """Confident when either object is visible (logit = 4·max over objects of their visible fraction)."""

    def forward(self, x, reference, instances):
        visible = torch.exp(-((x - reference) ** 2).sum(1) / 0.01)
        fraction = (visible[:, None] * instances).flatten(2).sum(2) / instances.flatten(2).sum(2)
        evidence = fraction.amax(1)
        return torch.stack([4 * evidence, torch.zeros_like(evidence)], 1)


@pytest.fixture(scope="module")
def sag():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = ShapesDataset(8, image_size=48, num_objects=2, seed=0)
        item = data[0]  # two light objects, no patch of the 6×6 grid touches both
        x = item["image"][None].double()
        inst = item["instance_masks"][None].double()
        heuristic = F.adaptive_avg_pool2d(inst.sum(1, keepdim=True), GRID)[:, 0]
        result = StructuredAttentionGraph(TwoRoutes().eval()).explain(
            x,
            additional_forward_args=(x, inst),
            heuristic=heuristic,
            grid_size=GRID,
            patch_interpolation="nearest",
            max_root_size=4,
        )[0]
    finally:
        torch.set_num_threads(threads)
    assert len(result.roots) >= 2 and result.edges
    return result


def test_render_draws_one_panel_per_node(sag):
    fig = render_sag(sag)
    try:
        # the image panel plus one thumbnail per node
        assert len(fig.axes) == 1 + len(sag.nodes)
        texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
        for attributes in sag.nodes.values():
            assert f"{round(100 * attributes['confidence'])}%" in texts
        assert sag.dnf in " ".join(texts).replace("\n", " ")
        assert len(fig.patches) + len(fig.artists) >= len(sag.edges)  # one arrow per edge
    finally:
        plt.close(fig)
    fig = render_sag(sag, show_image=False, caption=False, max_per_row=1)
    try:
        rows = {a["level"] for a in sag.nodes.values()}
        assert len(fig.axes) == len(rows)
    finally:
        plt.close(fig)


def test_png_is_decodable_and_shows_the_graph(sag, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # Graphviz is not needed
    path = save_sag_png(sag, tmp_path / "sag.png", dpi=80)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    lit = pixels.max(-1) > 0.2
    assert 0.02 < lit.mean() < 0.6  # a black background with pictures on it, not blank
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.2) & (pixels[..., 2] < 0.2)
    assert red.sum() > 20  # removed patches are outlined in red
    # the graph area (right of the image panel) has several separate lit columns: the nodes of a row
    right = lit[:, pixels.shape[1] // 3 :]
    runs = np.diff(right.any(0).astype(int))
    assert (runs == 1).sum() >= 2


def test_thumbnail_dims_everything_but_the_patches(sag):
    root = sag.roots[0]
    thumb = node_thumbnail(sag, root)
    image = np.clip(sag.image.permute(1, 2, 0).numpy(), 0, 1)
    visible = sag.patch_mask(root).numpy().astype(bool)
    assert np.allclose(thumb[visible], image[visible])
    assert np.allclose(thumb[~visible], 0.1 * image[~visible])


def test_dot_text_has_every_node_and_edge(sag, tmp_path):
    dot = sag_to_dot(sag)
    assert dot.startswith("digraph SAG {") and dot.rstrip().endswith("}")
    assert len(re.findall(r"^\s+n\d+ \[label=", dot, flags=re.M)) == len(sag.nodes)
    assert len(re.findall(r"->", dot)) == len(sag.edges)
    for _, _, attributes in sag.edges:
        assert f'label="-P{attributes["removed"]}"' in dot
    with_images = sag_to_dot(sag, image_dir=tmp_path / "nodes")
    files = sorted((tmp_path / "nodes").glob("n*.png"))
    assert len(files) == len(sag.nodes) and with_images.count("image=") == len(sag.nodes)


def test_save_sag_png_and_empty_graph(sag, tmp_path):
    path = save_sag_png(sag, tmp_path / "deep" / "g.png", dpi=50)
    assert path.exists()
    empty = type(sag)(**{**sag.__dict__, "roots": [], "nodes": {}, "edges": [], "dnf": ""})
    fig = render_sag(empty)
    try:
        assert any("no sufficient" in t.get_text() for t in fig.texts)
    finally:
        plt.close(fig)


def test_the_earlier_drawing_methods_warn_and_still_draw(sag, tmp_path):
    for method in ("render", "plot"):
        with pytest.warns(DeprecationWarning, match=r"viz\.render_sag"):
            fig = getattr(sag, method)(show_image=False)
        assert len(fig.axes) == len(sag.nodes)
        plt.close(fig)
    with pytest.warns(DeprecationWarning, match=r"viz\.save_sag_png"):
        assert sag.save_png(tmp_path / "old.png", dpi=40).exists()
    with pytest.warns(DeprecationWarning, match=r"viz\.sag_to_dot"):
        assert sag.to_dot() == sag_to_dot(sag)
    with pytest.warns(DeprecationWarning, match=r"to_networkx"):
        assert set(sag.graph.nodes) == set(sag.to_networkx().nodes)
