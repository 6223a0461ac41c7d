"""The app's figures on small matrices: the right cells marked, and hovers that name layer, head and value."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from safety_heads import plots
from safety_heads.ships import top_heads


@pytest.fixture
def scores() -> np.ndarray:
    """(4 layers, 3 heads), every value distinct, so the top-k is unambiguous."""
    return np.arange(12, dtype=float).reshape(4, 3) / 10.0


def by_name(fig: go.Figure, name: str):
    (trace,) = [t for t in fig.data if t.name == name]
    return trace


def test_score_heatmap_marks_top_and_selected(scores):
    top = [head for head, _ in top_heads(torch.tensor(scores), 3)]
    fig = plots.score_heatmap(scores, top, [(0, 1)], title="t", score_name="KL")
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    np.testing.assert_allclose(np.asarray(heat.z), scores)
    assert list(heat.y) == [0, 1, 2, 3] and list(heat.x) == [0, 1, 2]
    for word in ("layer", "head", "KL"):
        assert word in heat.hovertemplate

    marked = by_name(fig, "top 3")
    assert list(zip(marked.y, marked.x, strict=True)) == top  # y is the layer, x the head
    assert list(marked.text) == ["1", "2", "3"]
    assert [row[0] for row in marked.customdata] == pytest.approx([1.1, 1.0, 0.9])
    assert "layer" in marked.hovertemplate and "rank" in marked.hovertemplate

    chosen = by_name(fig, "selected")
    assert (chosen.y[0], chosen.x[0]) == (0, 1)
    assert chosen.customdata[0][0] == pytest.approx(0.1)


def test_score_heatmap_without_marks_has_only_the_grid(scores):
    fig = plots.score_heatmap(scores)
    assert len(fig.data) == 1


def test_top10_map_puts_ua_circles_and_sc_crosses_at_layer_and_head():
    tops = {
        "on JailbreakBench": {"UA": [((2, 1), 0.9), ((0, 0), 0.5)], "SC": [((0, 0), 0.8), ((3, 2), 0.2)]},
        "on MaliciousInstruct": {"UA": [((1, 2), 0.3)]},
    }
    fig = plots.top10_map(tops, n_layers=4, n_heads=3)
    ua, sc, ua_mi = fig.data
    assert (ua.marker.symbol, sc.marker.symbol) == ("circle", "x")
    assert "UA" in ua.name and "circles" in ua.name and "SC" in sc.name and "crosses" in sc.name
    assert list(ua.x) == [2, 0] and list(ua.y) == [1, 0]  # x is the layer, y the head
    assert list(sc.x) == [0, 3] and list(sc.y) == [0, 2]
    assert list(ua.marker.color) == [0.9, 0.5] and list(sc.marker.color) == [0.8, 0.2]  # colour is the score
    assert ua.customdata[1] == [0, 0, 2, 0.5]  # layer, head, rank, score
    # One colour bar per prompt set, shared by its two marker styles; each mode in the legend once.
    assert ua.marker.coloraxis == sc.marker.coloraxis == "coloraxis" and ua_mi.marker.coloraxis == "coloraxis2"
    assert fig.layout.coloraxis2.colorbar.title.text == "generalized Ships"
    assert (ua.showlegend, sc.showlegend, ua_mi.showlegend) == (True, True, False)
    assert (ua.xaxis, ua_mi.xaxis) == ("x", "x2")
    assert [a.text for a in fig.layout.annotations] == list(tops)
    for axis, title, n in (
        (fig.layout.xaxis, "layer", 4),
        (fig.layout.yaxis, "head", 3),
        (fig.layout.xaxis2, "layer", 4),
    ):
        assert axis.title.text == title and list(axis.range) == [-1, n]
    for word in ("layer", "head", "rank", "score"):
        assert word in ua.hovertemplate


def test_top10_scatter_puts_each_model_at_layer_and_score():
    tops = {
        "UA": {"model A": [((3, 1), 2.0), ((0, 2), 1.0)], "model B": [((3, 1), 1.5)]},
        "SC": {"model B": [((1, 0), 0.7)], "model A": [((2, 2), 0.4)]},
    }
    fig = plots.top10_scatter(tops, n_layers=4)
    a_ua, b_ua, b_sc, a_sc = fig.data
    assert [t.name for t in fig.data] == ["model A", "model B", "model B", "model A"]
    assert list(a_ua.x) == [3, 0] and list(a_ua.y) == [2.0, 1.0]  # x is the layer, y the score
    assert list(b_sc.x) == [1] and list(b_sc.y) == [0.7]
    # One marker style per model, the same in every panel, and each model in the legend once.
    assert a_ua.marker.symbol == a_sc.marker.symbol != b_ua.marker.symbol == b_sc.marker.symbol
    assert a_ua.marker.color == a_sc.marker.color != b_ua.marker.color
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    assert (b_sc.xaxis, a_sc.xaxis) == ("x2", "x2")
    assert b_ua.customdata[0] == [3, 1, 1, 1.5]  # the head is named in the hover
    assert [a.text for a in fig.layout.annotations] == ["UA", "SC"]
    assert fig.layout.xaxis.title.text == "layer" and list(fig.layout.xaxis2.range) == [-1, 4]
    assert fig.layout.yaxis.title.text == "generalized Ships"


def test_attention_heatmaps_blank_the_causal_upper_triangle():
    T = 4
    intact = np.tril(np.full((T, T), 0.1)) + np.eye(T) * 0.5
    ablated = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # UA: uniform over visible keys
    fig = plots.attention_heatmaps(intact, ablated, ["<s>", "a", "a", "b"], (3, 1), mode="UA")
    assert len(fig.data) == 2
    for trace, matrix in zip(fig.data, (intact, ablated), strict=True):
        z = np.asarray(trace.z, dtype=float)
        assert np.isnan(z[np.triu_indices(T, 1)]).all()
        np.testing.assert_allclose(z[np.tril_indices(T)], matrix[np.tril_indices(T)])
        assert "layer 3, head 1" in trace.hovertemplate
        assert "query 3 'b'" in trace.text[3][1] and "key 1 'a'" in trace.text[3][1]
        assert trace.text[0][3] == ""
    assert "ablated (UA), head 3-1" in [a.text for a in fig.layout.annotations]


def test_attention_tokens_are_escaped_for_plotly():
    fig = plots.attention_heatmaps(np.eye(2), np.eye(2), ["<|im_start|>", "hi\n"], (0, 0))
    assert "'&lt;|im_start|&gt;'" in fig.data[0].text[1][0] and "'hi⏎'" in fig.data[0].text[1][1]
    assert list(fig.layout.xaxis.ticktext) == ["&lt;|im_start|&gt;", "hi⏎"]


def test_attention_heatmaps_refuse_mismatched_shapes():
    with pytest.raises(AssertionError):
        plots.attention_heatmaps(np.zeros((3, 3)), np.zeros((2, 2)), ["a", "b", "c"], (0, 0))


def test_asr_bars_one_trace_per_run():
    rates = {"intact": {"ASR": 0.1, "refusal": 0.9}, "ablated": {"ASR": 0.8, "refusal": 0.2}}
    fig = plots.asr_bars(rates)
    assert [t.name for t in fig.data] == ["intact", "ablated"]
    assert list(fig.data[1].y) == [0.8, 0.2]
    assert list(fig.data[0].x) == ["ASR", "refusal"]


def test_figures_serialise_to_json(scores):
    """gr.Plot sends figures as JSON; NaN cells and numpy values must survive that."""
    for fig in (
        plots.score_heatmap(scores, [(3, 2)], [(0, 0)]),
        plots.top10_map({"a": {"UA": [((0, 0), 1.0)], "SC": [((1, 1), 2.0)]}}, 2, 2),
        plots.top10_scatter({"UA": {"a": [((0, 0), 1.0)], "b": [((1, 1), 2.0)]}}, 2),
        plots.attention_heatmaps(np.eye(2), np.eye(2), ["a", "b"], (0, 0)),
    ):
        assert fig.to_json()
