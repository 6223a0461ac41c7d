"""Plotly figures for the app, as pure functions of numbers (no model, no Gradio), so they test on their own.

- `score_heatmap`: a layer x head grid of a head score, the top-k ringed and numbered, selected heads squared;
- `top10_map`: the paper's "top-10 safety heads on <prompt set>": heads on a layer x head grid, one marker
  style per mode, coloured by their score;
- `top10_scatter`: the paper's model-vs-model view: per mode, each model's top-10 by layer and score;
- `attention_heatmaps`: one head's attention pattern on a prompt, intact and ablated, as two T x T grids;
- `asr_bars`: attack success rates of the intact, ablated and random-control runs;
- `method_curves`: per ranking, a grid rate against the number of heads k, beside the band of random heads.

Heads are (layer, head) pairs counted from 0 and written "L-H" (see `ablation.format_head`); every hover
names the layer, the head and the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .ablation import Head, format_head

TOP_COLOR = "#111111"
SELECTED_COLOR = "#e4002b"
BAR_COLORS = ("#4c78a8", "#e4572e", "#9d9d9d")
PALETTE = ("#4c78a8", "#e4572e", "#54a24b", "#b279a2", "#f58518", "#72b7b2", "#9d755d", "#eeca3b")
# As in the paper: circles for undifferentiated attention, crosses for scaling contribution.
MODE_MARKERS = {
    "UA": ("circle", "UA top-10 (circles): undifferentiated attention"),
    "SC": ("x", "SC top-10 (crosses): scaling contribution"),
}
MODEL_MARKERS = (("circle", "#5b2a86"), ("x", "#d4a106"), ("diamond", "#1b9e77"), ("triangle-up", "#e7298a"))


def _matrix(values) -> np.ndarray:
    """Any (rows, cols) array-like (list of lists, numpy array, torch tensor) as a float numpy array."""
    matrix = np.asarray(values.tolist() if hasattr(values, "tolist") else values, dtype=float)
    assert matrix.ndim == 2, f"expected a 2-D matrix, got shape {matrix.shape}"
    return matrix


def score_heatmap(
    scores,
    top: Sequence[Head] = (),
    selected: Sequence[Head] = (),
    *,
    title: str = "",
    score_name: str = "score",
) -> go.Figure:
    """A layer x head heatmap of `scores` (L, H): `top` heads ringed with their rank, `selected` ones in red.

    Layers run up the y axis (layer 0 at the bottom), heads along x, as in the paper's figures.
    """
    matrix = _matrix(scores)
    n_layers, n_heads = matrix.shape
    hover = "layer %{y}, head %{x}<br>" + score_name + " %{z:.4g}<extra></extra>"
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            colorscale="Blues",
            colorbar={"title": {"text": score_name}},
            hovertemplate=hover,
            name=score_name,
        )
    )
    rank = {head: i + 1 for i, head in enumerate(top)}
    if top:
        fig.add_trace(
            go.Scatter(
                x=[h for _, h in top],
                y=[layer for layer, _ in top],
                mode="markers+text",
                text=[str(rank[head]) for head in top],
                textfont={"color": TOP_COLOR, "size": 10},
                marker={
                    "symbol": "circle",
                    "size": 17,
                    "color": "rgba(255,255,255,0.85)",
                    "line": {"width": 1.5, "color": TOP_COLOR},
                },
                customdata=[[matrix[head], rank[head]] for head in top],
                hovertemplate=(
                    "layer %{y}, head %{x}<br>" + score_name + " %{customdata[0]:.4g}<br>"
                    "top-10 rank %{customdata[1]}<extra></extra>"
                ),
                name=f"top {len(top)}",
            )
        )
    if selected:
        fig.add_trace(
            go.Scatter(
                x=[h for _, h in selected],
                y=[layer for layer, _ in selected],
                mode="markers",
                marker={"symbol": "square-open", "size": 24, "color": SELECTED_COLOR, "line": {"width": 3}},
                customdata=[[matrix[head]] for head in selected],
                hovertemplate=(
                    "selected: layer %{y}, head %{x}<br>" + score_name + " %{customdata[0]:.4g}<extra></extra>"
                ),
                name="selected",
            )
        )
    fig.update_layout(
        title={"text": title},
        xaxis={
            "title": {"text": "head"},
            "dtick": 1 if n_heads <= 40 else None,
            "range": [-0.5, n_heads - 0.5],
        },
        yaxis={
            "title": {"text": "layer"},
            "dtick": 1 if n_layers <= 40 else None,
            "range": [-0.5, n_layers - 0.5],
        },
        legend={"orientation": "h", "y": -0.12},
        height=max(360, 18 * n_layers + 140),
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
    )
    return fig


def _top_trace(top: Sequence[tuple[Head, float]], x: list, y: list, name: str, marker: dict) -> go.Scatter:
    """One top-k list as markers at (x, y); the hover names the head, its rank and its score."""
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        marker={"size": 13, "line": {"width": 1, "color": TOP_COLOR}} | marker,
        name=name,
        customdata=[[layer, head, rank + 1, score] for rank, ((layer, head), score) in enumerate(top)],
        hovertemplate=(
            name + "<br>layer %{customdata[0]}, head %{customdata[1]}<br>"
            "rank %{customdata[2]}, score %{customdata[3]:.4g}<extra></extra>"
        ),
    )


def _axis_ticks(n: int) -> dict:
    """Axis 0..n-1 with room for a whole marker at either end."""
    return {"range": [-1, n], "dtick": 1 if n <= 16 else 2}


def top10_map(
    tops: Mapping[str, Mapping[str, Sequence[tuple[Head, float]]]],
    n_layers: int,
    n_heads: int,
    *,
    title: str = "",
    score_name: str = "generalized Ships",
) -> go.Figure:
    """One panel per prompt set: each mode's top heads at (layer, head), UA as circles and SC as crosses.

    `tops` maps a panel title (the prompt set) to {mode: [(head, score)], best first}. As in the paper, a
    marker's colour is its head's score in that mode, on one colour bar per panel; a head in both lists shows
    a cross inside a circle.
    """
    fig = make_subplots(rows=1, cols=max(1, len(tops)), subplot_titles=list(tops), horizontal_spacing=0.14)
    for col, by_mode in enumerate(tops.values(), start=1):
        axis = "coloraxis" if col == 1 else f"coloraxis{col}"
        for mode, top in by_mode.items():
            symbol, name = MODE_MARKERS[mode]
            scores = [score for _, score in top]
            x, y = [layer for (layer, _), _ in top], [head for (_, head), _ in top]
            marker = {"symbol": symbol, "color": scores, "coloraxis": axis, "size": 15 if symbol == "circle" else 11}
            trace = _top_trace(top, x, y, name, marker)
            fig.add_trace(trace.update(legendgroup=mode, showlegend=col == 1), row=1, col=col)
        right = fig.layout[f"xaxis{col if col > 1 else ''}"].domain[1]
        bar = {"title": {"text": score_name}, "x": right + 0.01, "len": 0.8, "thickness": 12}
        fig.layout[axis] = {"colorscale": "Viridis", "colorbar": bar}
    fig.update_xaxes(title_text="layer", **_axis_ticks(n_layers))
    fig.update_yaxes(title_text="head", **_axis_ticks(n_heads))
    fig.update_layout(
        title={"text": title},
        legend={"orientation": "h", "y": -0.18},
        height=max(380, 22 * n_heads + 200),
        margin={"l": 50, "r": 40, "t": 70, "b": 40},
    )
    return fig


def top10_scatter(
    tops: Mapping[str, Mapping[str, Sequence[tuple[Head, float]]]],
    n_layers: int,
    *,
    title: str = "",
    score_name: str = "generalized Ships",
) -> go.Figure:
    """One panel per mode: each model's top heads at (layer, score), one marker style per model.

    `tops` maps a panel title (the mode) to {model: [(head, score)], best first}. Many heads can share a layer,
    so the head is named in the hover rather than on the marker.
    """
    fig = make_subplots(rows=1, cols=max(1, len(tops)), subplot_titles=list(tops), horizontal_spacing=0.08)
    models = list(dict.fromkeys(model for by_model in tops.values() for model in by_model))
    for col, by_model in enumerate(tops.values(), start=1):
        for model, top in by_model.items():
            symbol, color = MODEL_MARKERS[models.index(model) % len(MODEL_MARKERS)]
            x, y = [layer for (layer, _), _ in top], [score for _, score in top]
            trace = _top_trace(top, x, y, model, {"symbol": symbol, "color": color})
            fig.add_trace(trace.update(legendgroup=model, showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="layer", **_axis_ticks(n_layers))
    fig.update_yaxes(title_text=score_name, rangemode="tozero")
    fig.update_layout(
        title={"text": title},
        legend={"orientation": "h", "y": -0.18},
        height=440,
        margin={"l": 60, "r": 20, "t": 70, "b": 40},
    )
    return fig


def token_label(token: str) -> str:
    """A token as plotly text: special tokens such as <|im_start|> escaped (plotly reads a subset of HTML),
    newlines shown as ⏎."""
    return token.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "⏎")


def _attention_hover(tokens: Sequence[str], matrix: np.ndarray) -> list[list[str]]:
    shown = [f"'{token_label(t)}'" for t in tokens]
    return [
        [
            f"query {i} {shown[i]}<br>key {j} {shown[j]}<br>weight {matrix[i, j]:.4f}" if j <= i else ""
            for j in range(len(tokens))
        ]
        for i in range(len(tokens))
    ]


def attention_heatmaps(
    intact,
    ablated,
    tokens: Sequence[str],
    head: Head,
    *,
    mode: str = "UA",
    title: str = "",
) -> go.Figure:
    """One head's (T, T) attention pattern before and after ablation, side by side, lower triangle only.

    Row i is query position i, column j key position j; the causal mask leaves j > i empty (blank here).
    """
    before, after = _matrix(intact), _matrix(ablated)
    T = len(tokens)
    assert before.shape == after.shape == (T, T), (before.shape, after.shape, T)
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    name = format_head(head)
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=(f"intact, head {name}", f"ablated ({mode}), head {name}"),
    )
    for col, matrix in ((1, before), (2, after)):
        shown = np.where(upper, np.nan, matrix)
        hover = _attention_hover(tokens, matrix)
        fig.add_trace(
            go.Heatmap(
                z=shown,
                text=hover,
                hovertemplate=f"layer {head[0]}, head {head[1]}<br>" + "%{text}<extra></extra>",
                colorscale="Viridis",
                zmin=0.0,
                zmax=1.0,
                showscale=col == 2,
                colorbar={"title": {"text": "weight"}},
            ),
            row=1,
            col=col,
        )
    ticks = {
        "tickmode": "array",
        "tickvals": list(range(T)),
        "ticktext": [token_label(t) for t in tokens],
        "tickfont": {"size": 8},
    }
    fig.update_xaxes(title_text="key token", **ticks)
    fig.update_yaxes(autorange="reversed", **ticks)
    fig.update_yaxes(title_text="query token", row=1, col=1)
    fig.update_layout(
        title={"text": title or f"Attention of layer {head[0]}, head {head[1]}"},
        height=max(420, min(900, 12 * T + 200)),
        margin={"l": 80, "r": 20, "t": 70, "b": 80},
    )
    return fig


def asr_bars(rates: Mapping[str, Mapping[str, float]], *, title: str = "") -> go.Figure:
    """Grouped bars: per run (intact, ablated, random control), its rates (ASR, refusal, degenerate...)."""
    metrics = list(next(iter(rates.values())).keys()) if rates else []
    fig = go.Figure()
    for i, (run, values) in enumerate(rates.items()):
        fig.add_trace(
            go.Bar(
                name=run,
                x=metrics,
                y=[values[m] for m in metrics],
                marker_color=BAR_COLORS[i % len(BAR_COLORS)],
                hovertemplate=run + "<br>%{x} %{y:.2f}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title={"text": title},
        yaxis={"range": [0, 1], "title": {"text": "share of prompts"}},
        height=360,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
    )
    return fig


Curve = dict[int, float]  # k -> rate


def method_curves(
    panels: Mapping[str, tuple[Mapping[str, Curve], Mapping[int, Sequence[float]]]],
    *,
    metric: str = "rate",
    title: str = "",
) -> go.Figure:
    """One panel per entry: {ranking: {k: rate}} as lines, and random heads' draws {k: [rates]} as a grey band
    from the lowest to the highest draw (the band is drawn only where a k has draws)."""
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=list(panels), shared_yaxes=True)
    for col, (curves, random) in enumerate(panels.values(), start=1):
        ks = sorted(random)
        if ks:
            low, high = [min(random[k]) for k in ks], [max(random[k]) for k in ks]
            band = {"x": ks + ks[::-1], "y": high + low[::-1], "fill": "toself", "mode": "lines"}
            fig.add_trace(
                go.Scatter(**band, line={"width": 0}, fillcolor="rgba(157,157,157,0.35)", name="random heads",
                           legendgroup="random", showlegend=col == 1, hoverinfo="skip"),
                row=1, col=col,
            )  # fmt: skip
        for i, (ranking, curve) in enumerate(curves.items()):
            k = sorted(curve)
            fig.add_trace(
                go.Scatter(x=k, y=[curve[x] for x in k], mode="lines+markers", name=ranking, legendgroup=ranking,
                           showlegend=col == 1, line={"color": PALETTE[i % len(PALETTE)]},
                           hovertemplate=ranking + "<br>k=%{x}: %{y:.2f}<extra></extra>"),
                row=1, col=col,
            )  # fmt: skip
        fig.update_xaxes(title_text="heads ablated (k)", row=1, col=col)
    fig.update_yaxes(range=[0, 1], title_text=metric, row=1, col=1)
    fig.update_layout(title={"text": title}, height=420, margin={"l": 60, "r": 20, "t": 80, "b": 50})
    return fig
