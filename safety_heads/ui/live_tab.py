"""The "Score this prompt" tab: live Ships of every head on the current prompt."""

from __future__ import annotations

import gradio as gr

from .scores_tab import TOP_HEADERS


def pick_scored_head(typed, evt: gr.SelectData):
    """Clicking a row of the live-scored top-10 adds that head to the typed list."""
    head = str(evt.row_value[1])
    items = [t for t in (typed or "").replace(",", " ").split() if t]
    return ", ".join(items if head in items else [*items, head])


with gr.Blocks() as block:
    gr.Markdown("Ships on the current prompt: every head ablated in turn, KL of the next-token distribution.")
    score = gr.Button("Score every head on this prompt")
    with gr.Row():
        heatmap = gr.Plot(label="Ships, layer × head", scale=3)
        top_list = gr.Dataframe(headers=TOP_HEADERS, label="Top-10 (click to add)", interactive=False, scale=1)
