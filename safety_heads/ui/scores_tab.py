"""The "Head scores" tab: the precomputed score of every head as a heatmap, and the top-10 as a table."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import plots
from ..ablation import Head, format_head
from ..head_options import HeadOptions
from ..rankings import basis

TOP_HEADERS = ["rank", "head", "score"]


def top_table(top: list[tuple[Head, float]]) -> pd.DataFrame:
    rows = [[i + 1, format_head(h), float(f"{s:.4g}")] for i, (h, s) in enumerate(top)]
    return pd.DataFrame(rows, columns=TOP_HEADERS)


def score_figure(opts: HeadOptions, selected: list[Head]):
    # Scores come with their file and ranking (see `head_options`); the last two checks narrow the types.
    if opts.scores is None or opts.pre is None or opts.ranking is None:
        return None
    return plots.score_heatmap(
        opts.scores,
        [h for h, _ in opts.top],
        selected,
        title=f"{opts.pre.model}: {opts.ranking} ({opts.pre.prompt_set}, {opts.pre.mode})",
        score_name=basis(opts.ranking),
    )


def pick_top_head(checked, evt: gr.SelectData):
    """Clicking a row of the precomputed top-10 ticks (or unticks) that head."""
    head = str(evt.row_value[1])
    return [c for c in checked if c != head] if head in checked else [*checked, head]


with gr.Blocks() as block:
    with gr.Row():
        heatmap = gr.Plot(label="Precomputed score, layer × head (circles: top-10, red: selected)", scale=3)
        top_list = gr.Dataframe(headers=TOP_HEADERS, label="Top-10 (click a row to select)", interactive=False, scale=1)
