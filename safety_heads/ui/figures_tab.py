"""The "Paper figures" tab: the paper's two views of the top-10 safety heads, drawn from the precomputed files.

- per model: "Top-10 safety heads on JailbreakBench and MaliciousInstruct", UA and SC heads on one map;
- per prompt set: "Top-10 safety heads, model A vs model B", one panel per mode;
- ours: which ranking finds refusal heads, each ranking's grid rate against the number of heads k beside the
  band of random heads, on the prompts the intact model refuses, per direction of the cross-set grid.

Heads are ranked, placed and coloured by generalized Ships, as in the paper. A missing file leaves its
markers out and the note says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gradio as gr

from .. import plots
from ..ablation import MODES, Mode
from ..head_options import (
    FIGURE_RANKING,
    PROMPT_SET_LABELS,
    figure_file,
    method_curves,
    precomputed_models,
    ranked,
    summary_rows,
)
from ..precomputed import Precomputed

MODE_TITLES = {
    "UA": "Top-10 safety heads, undifferentiated attention",
    "SC": "Top-10 safety heads, scaling contribution",
}


Cell = tuple[str, str, str, Mode]  # (marker set, model, prompt set, mode)


def collect(panels: Mapping[str, Sequence[Cell]]) -> tuple[dict, str, list[Precomputed]]:
    """{panel: {marker set: top-10}} from the files there are, a note naming those there are not, the files."""
    tops, missing, files = {}, [], []
    for panel, cells in panels.items():
        found = {}
        for name, model, prompt_set, mode in cells:
            pre = figure_file(model, prompt_set, mode)
            if pre is None:
                missing.append(f"{model} / {PROMPT_SET_LABELS.get(prompt_set, prompt_set)} / {mode}")
                continue
            found[name] = ranked(pre, FIGURE_RANKING)
            files.append(pre)
        if found:
            tops[panel] = found
    return tops, f" Not computed yet: {', '.join(missing)}." if missing else "", files


def set_figure(model: str):
    """The top-10 of `model` on each prompt set, UA as circles and SC as crosses; a note instead where none."""
    panels = {
        f"Top-10 safety heads on {label}": [(mode, model, prompt_set, mode) for mode in MODES]
        for prompt_set, label in PROMPT_SET_LABELS.items()
    }
    tops, missing, files = collect(panels)
    if not files:
        return None, f"No precomputed generalized Ships scores for **{model}** yet."
    title = f"{model}: top-10 safety heads by generalized Ships"
    figure = plots.top10_map(tops, files[0].n_layers, files[0].n_heads, title=title)
    return figure, f"**{model}**: UA top-10 as circles, SC top-10 as crosses.{missing}"


def model_figure(model_a: str, model_b: str, prompt_set: str):
    """Each model's top-10 on one prompt set, by layer and generalized Ships, one panel per mode."""
    label = PROMPT_SET_LABELS.get(prompt_set, prompt_set)
    chosen = list(dict.fromkeys(m for m in (model_a, model_b) if m))
    panels = {MODE_TITLES[mode]: [(model, model, prompt_set, mode) for model in chosen] for mode in MODES}
    tops, missing, files = collect(panels)
    if not files:
        return None, f"No precomputed generalized Ships scores on {label} for the chosen models yet."
    title = f"Top-10 safety heads on {label}: {' vs '.join(chosen)}"
    figure = plots.top10_scatter(tops, max(pre.n_layers for pre in files), title=title)
    return figure, f"{label}, one marker style per model.{missing}"


def methods_figure(model: str, mode: Mode):
    """Each ranking's attempt rate (or, for grids measured before it, coherent ASR) against k, with random heads."""
    rows = summary_rows(model)
    metric = "attempt_rate" if rows and all(r.get("attempt_rate") is not None for r in rows) else "coherent_asr"
    panels = method_curves(rows, mode, metric)
    if not panels:
        return None, f"No grid measured for **{model}** under {mode} yet."
    title = f"{model}, {mode}: which ranking finds refusal heads (prompts the intact model refuses)"
    figure = plots.method_curves(panels, metric=metric.replace("_", " "), title=title)
    label = "attempt rate (the opening sentence does not decline)" if metric == "attempt_rate" else "coherent ASR"
    return figure, f"{label} of the grid's answers; grey: the lowest to the highest random draw of k heads."


models = precomputed_models()
with gr.Blocks() as block:
    set_note = gr.Markdown()
    set_plot = gr.Plot(label="Top-10 safety heads on JailbreakBench and MaliciousInstruct (circles: UA, crosses: SC)")
    with gr.Row():
        model_a = gr.Dropdown(models, value=models[0] if models else None, label="Model A")
        model_b = gr.Dropdown(models, value=models[1] if len(models) > 1 else None, label="Model B")
    model_note = gr.Markdown()
    model_plot = gr.Plot(label="Top-10 safety heads, model A vs model B (prompt set as chosen above)")
    methods_mode = gr.Radio(list(MODES), value="SC", label="Ablation of the grid")
    methods_note = gr.Markdown()
    methods_plot = gr.Plot(label="Which ranking finds refusal heads: rate against k, random heads in grey")
