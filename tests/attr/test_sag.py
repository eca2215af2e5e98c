"""Structured Attention Graphs: the acceptance checks of the method's specification, the search against a plain
one-image reference implementation, and the Captum contract.

Models are tiny (a hand-made two-route model and a small random CNN), images 16–48 px and grids 4–6, so the
whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import itertools
import random
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_xai.attr import IGOS, SAGResult, StructuredAttentionGraph
from lightning_xai.attr.sag import dnf_string, parse_dnf, patch_cells, patch_masks, select_diverse
from lightning_xai.data import ShapesDataset
from lightning_xai.explain import compose

DNF = re.compile(r"^P\d+( & P\d+)*( \| P\d+( & P\d+)*)*$")


class TwoRoutes(nn.Module):
    """Confident when either object is visible: the logit is ``scale·max_k`` (visible fraction of object k).

    The clean image and the instance masks come in as additional forward arguments (one row per image), so the
    model knows which pixels belong to which object of every candidate row.
    """

    def __init__(self, scale: float = 4.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x, reference, instances):
        visible = torch.exp(-((x - reference) ** 2).sum(1) / 0.01)
        fraction = (visible[:, None] * instances).flatten(2).sum(2) / instances.flatten(2).sum(2)
        evidence = fraction.amax(1)
        return torch.stack([self.scale * evidence, torch.zeros_like(evidence)], 1)


def tiny_cnn(classes: int = 3, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(4),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, classes),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model.double().eval()


GRID = 6


def two_object_batch(count: int, size: int = 48):
    """Two-object shapes images whose objects share no patch of the 6×6 grid and are not dark."""
    data = ShapesDataset(40, image_size=size, num_objects=2, seed=0)
    images, instances, covers = [], [], []
    for i in range(len(data)):
        item = data[i]
        inst = item["instance_masks"].double()
        cover = F.adaptive_max_pool2d(inst[:, None], GRID)[:, 0].flatten(1) > 0
        colour = item["image"][:, item["mask"]].mean(1)
        if not bool((cover[0] & cover[1]).any()) and float(colour.norm()) > 0.6:
            images.append(item["image"].double())
            instances.append(inst)
            covers.append([set(cover[k].nonzero()[:, 0].tolist()) for k in range(2)])
        if len(images) == count:
            break
    x, inst = torch.stack(images), torch.stack(instances)
    # object coverage of each patch: a cheap, deterministic search order
    heuristic = F.adaptive_avg_pool2d(inst.sum(1, keepdim=True), GRID)[:, 0]
    return x, inst, covers, heuristic


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation, which is slow on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TWO = {"grid_size": GRID, "patch_interpolation": "nearest", "max_root_size": 6}


@pytest.fixture(scope="module")
def two_routes():
    x, inst, covers, heuristic = two_object_batch(2)
    model = TwoRoutes().double().eval()
    results = StructuredAttentionGraph(model).explain(
        x, additional_forward_args=(x, inst), heuristic=heuristic, **TWO
    )
    return model, x, inst, covers, heuristic, results


def independent_prob(model, x, patches, target, grid, mode="bilinear", extra=(), baseline=None):
    """p(S) recomputed from scratch: one image, one set, one forward."""
    baseline = torch.zeros_like(x) if baseline is None else baseline
    mask = patch_masks([patches], grid, x.shape[-2:], mode, dtype=x.dtype)
    with torch.no_grad():
        logits = model(compose(x, baseline, mask), *extra)
    return float(logits.softmax(-1)[0, target])


# ----------------------------------------------------------------------------------------------------------
# §6.1 two routes
# ----------------------------------------------------------------------------------------------------------


def test_two_disjoint_objects_are_found_as_separate_roots(two_routes):
    _, _, _, covers, _, results = two_routes
    for result, (a, b) in zip(results, covers, strict=True):
        assert len(result.roots) >= 2
        in_a = [r for r in result.roots if r <= a]
        in_b = [r for r in result.roots if r <= b]
        assert in_a and in_b, (result.dnf, a, b)
        assert all(len(ra & rb) == 0 for ra in in_a for rb in in_b)
        conjunctions = result.dnf.split(" | ")
        assert dnf_string([in_a[0]]) in conjunctions and dnf_string([in_b[0]]) in conjunctions


# ----------------------------------------------------------------------------------------------------------
# §6.2 sufficiency and minimality, both trimming modes, recomputed independently
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("minimize", ["best_first", "index_sweep"])
def test_every_root_is_sufficient_and_minimal(two_routes, minimize):
    model, x, inst, _, heuristic, _ = two_routes
    results = StructuredAttentionGraph(model).explain(
        x, additional_forward_args=(x, inst), heuristic=heuristic, minimize=minimize, **TWO
    )
    for i, result in enumerate(results):
        threshold = 0.9 * result.p_full
        assert result.candidate_roots
        extra = (x[i : i + 1], inst[i : i + 1])
        for root in result.candidate_roots:
            p = independent_prob(model, x[i : i + 1], root, result.target, GRID, "nearest", extra)
            assert p > threshold
            for patch in root:
                if len(root) > 1:
                    q = independent_prob(
                        model, x[i : i + 1], root - {patch}, result.target, GRID, "nearest", extra
                    )
                    assert q <= threshold


@pytest.mark.parametrize("minimize", ["best_first", "index_sweep"])
def test_minimality_on_a_random_cnn(minimize):
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = StructuredAttentionGraph(model).explain(
        x, grid_size=4, heuristic=torch.rand(2, 4, 4, dtype=torch.float64), minimize=minimize, max_root_size=5
    )
    assert any(r.candidate_roots for r in results)
    for i, result in enumerate(results):
        threshold = 0.9 * result.p_full
        for root in result.candidate_roots:
            assert independent_prob(model, x[i : i + 1], root, result.target, 4) > threshold
            if len(root) > 1:
                for patch in root:
                    assert (
                        independent_prob(model, x[i : i + 1], root - {patch}, result.target, 4) <= threshold
                    )


# ----------------------------------------------------------------------------------------------------------
# The search against a plain one-image, one-set-at-a-time implementation of spec §2.2–2.4
# ----------------------------------------------------------------------------------------------------------


def reference_search(p, ranking, threshold, beam_width, q, max_roots, depth_limit, minimize):
    def trim(s):
        if minimize == "best_first":
            while len(s) > 1:
                best = max(sorted(s), key=lambda j: p(s - {j}))  # first maximum: lowest index
                if not p(s - {best}) > threshold:
                    break
                s = s - {best}
            return s
        while True:
            removed = False
            for j in sorted(s):
                if len(s) > 1 and p(s - {j}) > threshold:
                    s, removed = s - {j}, True
            if not removed:
                return s

    beam, roots = [frozenset()], []
    for _ in range(depth_limit):
        pool = []
        for state in beam:
            for j in [j for j in ranking if j not in state][:q]:
                if state | {j} not in pool:
                    pool.append(state | {j})
        if not pool:
            break
        pool.sort(key=lambda s: -p(s))
        beam = [s for s in pool if not p(s) > threshold][:beam_width]
        for s in pool:
            if p(s) > threshold and trim(s) not in roots:
                roots.append(trim(s))
        if len(roots) > max_roots or not beam:
            break
    return roots


@pytest.mark.parametrize("minimize", ["best_first", "index_sweep"])
def test_batched_search_matches_the_one_image_reference(minimize):
    model = tiny_cnn(seed=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    heuristic = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    settings = {"beam_width": 2, "num_successors": 5, "max_roots": 4, "max_root_size": 6}
    results = StructuredAttentionGraph(model).explain(
        x, grid_size=4, heuristic=heuristic, minimize=minimize, **settings
    )
    found = 0
    for i, result in enumerate(results):
        cache = {}

        def p(s, i=i, target=result.target, cache=cache):
            if s not in cache:
                cache[s] = independent_prob(model, x[i : i + 1], s, target, 4)
            return cache[s]

        ranking = sorted(range(16), key=lambda j, i=i: (-float(heuristic[i].flatten()[j]), j))
        assert list(result.ranking) == ranking
        expected = reference_search(
            p, ranking, 0.9 * result.p_full, 2, 5, settings["max_roots"], settings["max_root_size"], minimize
        )
        assert result.candidate_roots == expected
        found += len(expected)
    assert found > 0


# ----------------------------------------------------------------------------------------------------------
# §6.3 roots and diversity selection
# ----------------------------------------------------------------------------------------------------------


def brute_force_selection(sets, k):
    for size in range(len(sets), 0, -1):
        for combo in itertools.combinations(range(len(sets)), size):  # lexicographic order
            if all(len(sets[a] & sets[b]) <= k for a, b in itertools.combinations(combo, 2)):
                return list(combo)
    return []


def test_selection_is_the_lexicographically_smallest_maximum_subset():
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(0, 9)
        sets = [frozenset(rng.sample(range(10), rng.randint(1, 4))) for _ in range(n)]
        k = rng.randint(0, 2)
        assert select_diverse(sets, k) == brute_force_selection(sets, k)


def test_roots_are_unique_diverse_and_few(two_routes):
    *_, results = two_routes
    for result in results:
        assert len(set(result.candidate_roots)) == len(result.candidate_roots)
        assert 1 <= len(result.roots) <= 3
        assert all(len(a & b) <= 1 for a, b in itertools.combinations(result.roots, 2))
        chosen = brute_force_selection(result.candidate_roots, 1)[:3]
        assert result.roots == [result.candidate_roots[k] for k in chosen]
        assert result.root_probs == [result.nodes[r]["prob"] for r in result.roots]


# ----------------------------------------------------------------------------------------------------------
# §6.4 graph, §6.5 DNF
# ----------------------------------------------------------------------------------------------------------


def check_graph(result: SAGResult, max_children: int, node_threshold: float = 0.4) -> None:
    graph = result.to_networkx()
    import networkx as nx

    assert nx.is_directed_acyclic_graph(graph)
    assert graph.number_of_nodes() == len(result.nodes) == len(set(result.nodes))
    assert graph.number_of_edges() == len(result.edges)
    for parent, child, attributes in result.edges:
        assert parent - child == {attributes["removed"]} and child < parent
        drop = result.nodes[parent]["confidence"] - result.nodes[child]["confidence"]
        assert attributes["drop"] == pytest.approx(drop)
    for node, attributes in result.nodes.items():
        children = list(graph.successors(node))
        assert len(children) <= max_children
        if attributes["confidence"] <= node_threshold or len(node) == 1:
            assert not children
        assert any(node <= root for root in result.roots)
        assert attributes["patches"] == tuple(sorted(node))
        assert attributes["is_root"] == (node in result.roots)
        assert attributes["confidence"] == pytest.approx(attributes["prob"] / result.p_full)
        if attributes["level"] > 0:
            parents = [result.nodes[p]["level"] for p in graph.predecessors(node)]
            assert min(parents) == attributes["level"] - 1


@pytest.mark.parametrize("child_selection", ["first_by_index", "largest_drop"])
def test_graph_structure(two_routes, child_selection):
    model, x, inst, _, heuristic, _ = two_routes
    results = StructuredAttentionGraph(model).explain(
        x,
        additional_forward_args=(x, inst),
        heuristic=heuristic,
        child_selection=child_selection,
        max_children=2,
        node_threshold=0.3,
        **TWO,
    )
    assert any(result.edges for result in results)
    for i, result in enumerate(results):
        check_graph(result, max_children=2, node_threshold=0.3)
        extra = (x[i : i + 1], inst[i : i + 1])
        for parent in {p for p, _, _ in result.edges}:
            removed = sorted(a["removed"] for p, _, a in result.edges if p == parent)
            if child_selection == "first_by_index":
                assert removed == sorted(parent)[:2]
            else:
                # the kept removals leave the lowest probabilities (ties: lowest index)
                probs = {
                    j: independent_prob(
                        model, x[i : i + 1], parent - {j}, result.target, GRID, "nearest", extra
                    )
                    for j in parent
                }
                expected = sorted(sorted(parent), key=lambda j, probs=probs: probs[j])[:2]
                assert removed == sorted(expected)


def test_dnf_format_and_round_trip(two_routes):
    *_, results = two_routes
    for result in results:
        assert DNF.match(result.dnf)
        assert parse_dnf(result.dnf) == result.roots
    assert dnf_string([]) == "" and parse_dnf("") == []


# ----------------------------------------------------------------------------------------------------------
# §6.6 beam and cache
# ----------------------------------------------------------------------------------------------------------


class RowRecorder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.rows: list[bytes] = []

    def forward(self, x, *args):
        self.rows.extend(row.numpy().tobytes() for row in x)
        return self.model(x, *args)


def test_beam_sizes_and_no_set_is_scored_twice(two_routes):
    model, x, inst, _, heuristic, _ = two_routes
    recorder = RowRecorder(model).eval()
    results = StructuredAttentionGraph(recorder).explain(
        x, additional_forward_args=(x, inst), heuristic=heuristic, beam_width=2, internal_batch_size=7, **TWO
    )
    for result in results:
        assert result.stats["beam_sizes"] and max(result.stats["beam_sizes"]) <= 2
    clean_rows = 2 * x.shape[0]  # the clean pass scores every input and its baseline (the empty set)
    assert len(recorder.rows) == clean_rows + sum(r.stats["scored_sets"] for r in results)
    # distinct sets give distinct images here (nearest patches, no patch equal to the baseline)
    searched = recorder.rows[clean_rows:]
    assert len(set(searched)) == len(searched)


# ----------------------------------------------------------------------------------------------------------
# §6.7 batch invariance
# ----------------------------------------------------------------------------------------------------------


def signature(result: SAGResult):
    return (
        result.candidate_roots,
        result.roots,
        result.dnf,
        sorted((tuple(sorted(k)), v["level"], v["expanded"]) for k, v in result.nodes.items()),
        sorted((tuple(sorted(p)), tuple(sorted(c)), a["removed"]) for p, c, a in result.edges),
    )


def test_batched_search_equals_per_image_search():
    model = tiny_cnn(seed=0)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sag = StructuredAttentionGraph(model)
    settings = {"grid_size": 4, "max_root_size": 5, "heuristic_kwargs": {"n_steps": 4}, "seed": 11}
    batched = sag.explain(x, **settings)
    chunked = sag.explain(x, internal_batch_size=5, **settings)
    singles = [sag.explain(x[i : i + 1], **settings)[0] for i in range(3)]
    assert any(r.roots for r in singles)
    for a, b, c in zip(batched, chunked, singles, strict=True):
        assert signature(a) == signature(b) == signature(c)
        assert a.root_probs == pytest.approx(c.root_probs, abs=1e-6)
        assert b.root_probs == pytest.approx(c.root_probs, abs=1e-6)
        assert torch.allclose(a.heuristic, c.heuristic, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# §6.8 outputs, Captum contract
# ----------------------------------------------------------------------------------------------------------


def test_attribute_is_the_mean_root_mask(two_routes):
    model, x, inst, _, heuristic, results = two_routes
    sag = StructuredAttentionGraph(model)
    attr = sag.attribute(x, additional_forward_args=(x, inst), heuristic=heuristic, **TWO)
    assert attr.shape == x.shape and attr.dtype == x.dtype
    assert float(attr.min()) >= 0 and float(attr.max()) <= 1
    for i, result in enumerate(results):
        expected = patch_masks(result.roots, GRID, x.shape[-2:], "nearest", dtype=x.dtype).mean(0)[0]
        assert torch.equal(attr[i, 0], expected) and torch.equal(attr[i, 2], expected)
    (as_tuple,) = sag.attribute(
        (x[:1],), additional_forward_args=(x[:1], inst[:1]), heuristic=heuristic[:1], **TWO
    )
    assert torch.equal(as_tuple, attr[:1])


def test_attribute_without_roots_is_zero_with_a_warning():
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="no sufficient patch set"):
        attr = StructuredAttentionGraph(model).attribute(
            x,
            grid_size=4,
            heuristic=torch.rand(4, 4, dtype=torch.float64),
            prob_threshold=1e6,
            max_root_size=2,
        )
    assert attr.shape == x.shape and not attr.any()


def test_black_baseline_uses_the_normalisation():
    model = tiny_cnn()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    sag = StructuredAttentionGraph(model, normalization=(mean, std))
    result = sag.explain(x, grid_size=4, heuristic=torch.rand(4, 4, dtype=torch.float64), max_root_size=3)[0]
    black = (
        (-torch.tensor(mean, dtype=x.dtype) / torch.tensor(std, dtype=x.dtype)).view(1, 3, 1, 1).expand_as(x)
    )
    some = next(iter(result.nodes), frozenset({0}))
    expected = independent_prob(model, x, some, result.target, 4, baseline=black.clone())
    if result.nodes:
        assert result.nodes[some]["prob"] == pytest.approx(expected, abs=1e-12)
    display = x[0] * torch.tensor(std, dtype=x.dtype).view(3, 1, 1) + torch.tensor(mean, dtype=x.dtype).view(
        3, 1, 1
    )
    assert torch.allclose(result.image, display)


def test_explicit_target_and_stats():
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    results = StructuredAttentionGraph(model).explain(
        x, target=[0, 2], grid_size=4, heuristic=torch.rand(2, 4, 4, dtype=torch.float64), max_root_size=3
    )
    assert [r.target for r in results] == [0, 2]  # image 0's target is not its prediction
    with torch.no_grad():
        probs = model(x).softmax(-1)
        black = model(torch.zeros_like(x)).softmax(-1)
    assert [r.p_full for r in results] == pytest.approx([float(probs[0, 0]), float(probs[1, 2])])
    assert [r.stats["baseline_prob"] for r in results] == pytest.approx(
        [float(black[0, 0]), float(black[1, 2])]
    )
    assert not results[0].stats["uninformative"]
    assert results[0].stats["heuristic_rows"] == 0 and results[0].stats["depth"] >= 1
    d = results[0].to_dict()
    import json

    assert json.loads(json.dumps(d))["dnf"] == results[0].dnf


def test_igos_heuristic_is_the_igos_mask_ranking():
    model = tiny_cnn(seed=2)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = StructuredAttentionGraph(model).explain(
        x, grid_size=4, max_root_size=2, seed=5, heuristic_kwargs={"n_steps": 4}
    )
    target = torch.tensor([r.target for r in results])
    _, mask = IGOS(model).attribute(
        x,
        target=target,
        baselines="black",
        mask_size=4,
        n_iterations=2,
        n_steps=4,
        max_step=200.0,
        line_search="plain",
        l1_schedule=False,
        seed=5,
        return_mask=True,
    )
    for i, result in enumerate(results):
        importance = 1 - mask[i, 0]
        assert torch.allclose(result.heuristic, importance)
        values = importance.flatten().tolist()
        assert list(result.ranking) == sorted(range(16), key=lambda j, v=values: (-v[j], j))
        assert result.stats["heuristic_rows"] > 0


def test_callable_heuristic_is_area_resized():
    model = tiny_cnn()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    ramp = torch.arange(16.0, dtype=torch.float64).repeat(16, 1)[None]  # increases to the right

    result = StructuredAttentionGraph(model).explain(
        x, grid_size=4, heuristic=lambda inputs, target: ramp.expand(inputs.shape[0], -1, -1), max_root_size=1
    )[0]
    assert result.ranking[:4] == (3, 7, 11, 15)


def test_patch_geometry():
    bilinear = patch_masks([set(range(16))], 4, (14, 14))
    assert torch.allclose(bilinear, torch.ones_like(bilinear))
    tent = patch_masks([{0}], 4, (13, 13))[0, 0]  # centres on pixels 0, 4, 8, 12
    assert float(tent[0, 0]) == 1.0 and float(tent[2, 0]) == 0.5 and float(tent[4, 0]) == 0.0
    cells = patch_cells(4, (14, 14))  # centres 13/3 px apart: cells of 3, 4, 4, 3 px
    assert cells[5, 5] == 5 and cells[0, 0] == 0 and cells[13, 13] == 15
    assert (cells == 0).sum() == 3 * 3 and (cells == 5).sum() == 4 * 4 and (cells == 15).sum() == 3 * 3
    assert torch.equal(
        patch_cells(4, (16, 16), "nearest"),
        torch.arange(4).repeat_interleave(4)[:, None] * 4 + torch.arange(4).repeat_interleave(4)[None],
    )


# ----------------------------------------------------------------------------------------------------------
# §6.10 model state; errors
# ----------------------------------------------------------------------------------------------------------


def test_model_state_is_restored_and_inference_mode_works():
    model = tiny_cnn().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    hook = model.register_forward_hook(lambda *a: None)
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.clone() for p in model.parameters()]
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StructuredAttentionGraph(model).explain(
            x, grid_size=4, max_root_size=2, heuristic_kwargs={"n_steps": 2}
        )
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert list(model._forward_hooks) == [hook.id]
    model.eval()
    with torch.inference_mode():
        result = StructuredAttentionGraph(model).explain(
            x, grid_size=4, heuristic=torch.rand(4, 4, dtype=torch.float64), max_root_size=3
        )[0]
    assert result.stats["depth"] >= 1
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        StructuredAttentionGraph(model).explain(x, grid_size=4, max_root_size=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"grid_size": 1}, ValueError, "grid_size"),
        ({"grid_size": 17}, ValueError, "grid_size"),
        ({"prob_threshold": 0}, ValueError, "prob_threshold"),
        ({"beam_width": 0}, ValueError, "beam_width"),
        ({"minimize": "greedy"}, ValueError, "minimize"),
        ({"child_selection": "random"}, ValueError, "child_selection"),
        ({"patch_interpolation": "bicubic"}, ValueError, "patch_interpolation"),
        ({"heuristic": "gradcam"}, ValueError, "heuristic"),
        ({"heuristic": torch.rand(3, 3)}, ValueError, "heuristic"),
        ({"heuristic": 3}, TypeError, "heuristic"),
        ({"heuristic_kwargs": [1]}, TypeError, "heuristic_kwargs"),
        ({"heuristic_kwargs": {"mask_size": 3}}, ValueError, "heuristic_kwargs"),
        ({"target": [0]}, ValueError, "target"),
    ],
)
def test_bad_arguments_fail_before_any_model_call(kwargs, error, match):
    recorder = RowRecorder(tiny_cnn()).eval()
    with pytest.raises(error, match=match):
        StructuredAttentionGraph(recorder).explain(
            torch.rand(2, 3, 16, 16, dtype=torch.float64), **{"grid_size": 4, **kwargs}
        )
    assert recorder.rows == []


def test_the_results_earlier_name_still_works_with_a_warning():
    import lightning_xai
    from lightning_xai import attr

    for module in (lightning_xai, attr, attr.sag):
        with pytest.warns(DeprecationWarning, match="SAGResult"):
            assert module.SAG is SAGResult
    with pytest.raises(AttributeError):
        attr.sag.NoSuchName  # noqa: B018
