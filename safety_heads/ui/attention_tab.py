"""The "Attention pattern" tab: one selected head's attention on the prompt, intact and ablated."""

from __future__ import annotations

import gradio as gr

with gr.Blocks() as block:
    with gr.Row():
        head = gr.Dropdown([], label="Head", allow_custom_value=True, scale=1)
        show = gr.Button("Show attention on the prompt", scale=1)
    plot = gr.Plot(label="Attention, intact vs ablated")
