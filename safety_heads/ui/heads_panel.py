"""The panel that chooses the ablation: prompt set and mode of the precomputed lists, ranking, heads, ε, seed."""

from __future__ import annotations

import gradio as gr

from ..ablation import DEFAULT_EPS
from ..head_options import PROMPT_SET_LABELS, suggestion
from ..model_cache import initial_model
from ..runtime import DEFAULT_CPU_RUNTIME, RUNTIMES

# The first view shows the heads suggested for the model the page opens on (head_controls selects them).
FIRST = suggestion(initial_model())

with gr.Blocks() as block:
    prompt_set = gr.Radio(
        [(label, name) for name, label in PROMPT_SET_LABELS.items()],
        value=FIRST.prompt_set if FIRST else "jailbreakbench",
        label="Head lists from prompt set",
    )
    mode = gr.Radio(
        [("UA: undifferentiated attention", "UA"), ("SC: scale contribution", "SC")],
        value=FIRST.mode if FIRST else "UA",
        label="Ablation",
    )
    ranking = gr.Dropdown(
        [],
        value=None,
        label="Ranking",
        info="the precomputed score that ranks the heads",
        allow_custom_value=True,
    )
    precomputed_note = gr.Markdown()
    heads = gr.CheckboxGroup([], label="Heads to ablate (precomputed top-10, best first)")
    typed_heads = gr.Textbox(label="More heads (layer-head)", placeholder="18-8, 7-2")
    selection_note = gr.Markdown("No heads selected.")
    with gr.Accordion("Advanced", open=False):
        eps = gr.Number(DEFAULT_EPS, label="ε (ablation scale, in (0, 1])")
        seed = gr.Number(0, precision=0, label="Seed (top-k sampling, random-head control)")
        runtime = gr.Dropdown(
            [(f"{r.name}: {r.description}", r.name) for r in RUNTIMES.values()],
            value=DEFAULT_CPU_RUNTIME,
            label="Runtime (embedded models on the CPU; a model with an adapter runs in float32)",
        )
