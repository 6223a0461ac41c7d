"""The "Compare rankings" tab: the top-10 of every precomputed file side by side, by rank."""

from __future__ import annotations

import gradio as gr

with gr.Blocks() as block:
    note = gr.Markdown()
    plot = gr.Plot(label="Top-10 heads across models, prompt sets and modes")
