"""Safety heads: ablate a few attention heads of a chat model, watch its refusals go (Zhou et al., ICLR 2025).

Gradio-demo order: imports, one-time setup (the model starts loading in the background, so the page is up at
once), plain handler functions, the Blocks layout, one statement of wiring per event, `launch()` under
__main__. Each panel and tab is a small Blocks in `safety_heads/ui/`, rendered here. The science lives in
`safety_heads/`; handlers only translate between widgets and library calls.

Environment: SAFETY_HEADS_APP_MODEL (the model selected at start), SAFETY_HEADS_PRECOMPUTED (the folder of
precomputed head scores), SAFETY_HEADS_DATASETS (the prompt sets), SAFETY_HEADS_PRELOAD=0 (load on first
use instead of at start), and Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, TypedDict

import gradio as gr

from safety_heads import plots
from safety_heads.ablation import check_eps, format_head, parse_heads
from safety_heads.answers import DecodingConfig, stream_pair
from safety_heads.attention import attention_pattern
from safety_heads.coherence import judge_answers
from safety_heads.head_options import head_options
from safety_heads.inputs import check_prompt, heads_text, selected_heads, to_number
from safety_heads.judge import RefusalJudge
from safety_heads.model_cache import ModelCache, initial_model, load_for_app, model_choices
from safety_heads.models import ModelLoadError
from safety_heads.precomputed import coherence_limit
from safety_heads.run_record import run_record, write_record
from safety_heads.runtime import DEFAULT_CPU_RUNTIME, check_runtime
from safety_heads.set_evaluation import evaluate_set
from safety_heads.ships import ships, top_heads
from safety_heads.ui import attention_tab, compare_panel, evaluate_tab, figures_tab, heads_panel, live_tab, scores_tab
from safety_heads.ui.badges import badge_html
from safety_heads.ui.errors import shown_to_user
from safety_heads.ui.live_tab import pick_scored_head
from safety_heads.ui.scores_tab import pick_top_head, score_figure, top_table

try:  # On a ZeroGPU Space, `spaces.GPU` lends a GPU for the duration of each model call.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


class EventOptions(TypedDict, total=False):
    """Options that several event listeners share (see the wiring), typed as Gradio's listeners take them."""

    concurrency_limit: int
    concurrency_id: str
    api_visibility: Literal["public", "private", "undocumented"]


# One-time setup: the allowlist, the model cache (one model per catalog name, shared read-only), the judge.
MODELS = model_choices()
INITIAL_MODEL = initial_model()
cache = ModelCache(load_for_app)
if os.environ.get("SAFETY_HEADS_PRELOAD", "1") != "0":
    cache.preload(INITIAL_MODEL, DEFAULT_CPU_RUNTIME)
judge = RefusalJudge()
# The queue as launched under __main__ (the load test launches the app in-process with the same settings).
QUEUE = {"max_size": 32, "default_concurrency_limit": 4}
EXPORT_DIR = Path(tempfile.gettempdir()) / "safety-heads-runs"
NOTICE = """\
# Safety heads
**Research use only.** This demo removes a few attention heads from small open chat models to show that
their refusals hang on them ([Zhou et al., ICLR 2025](https://arxiv.org/abs/2410.13708)). An ablated model
may write harmful text: it is shown here to study how alignment fails, not to be used. Prompts are not
logged; the record of each comparison is kept for download for about an hour, then deleted.
"""


def model_for(name: str, runtime: str, progress: gr.Progress):
    if name not in MODELS:
        raise ValueError(f"Model {name!r} is not offered here; choose one of {', '.join(MODELS)}")
    check_runtime(runtime)
    if cache.loaded(name, runtime) is None:
        progress((0, None), desc=f"Loading {MODELS[name].label} (first use)…")
    return cache.get(name, runtime)


def decoding_config(decoding, max_new_tokens, seed) -> DecodingConfig:
    """The decoding widgets' values, each checked (an emptied number field is refused by name)."""
    tokens, seed = to_number(max_new_tokens, "Max new tokens", True), to_number(seed, "Seed", True)
    return DecodingConfig(decoding, tokens, seed=seed)


def load_model(name: str, runtime: str, progress=gr.Progress()):
    """Show the model's loading state (and, on a first start, its stage) until it is ready; the load itself
    runs in a background thread."""
    with shown_to_user():
        if name not in MODELS:
            raise ValueError(f"Model {name!r} is not offered here")
        check_runtime(runtime)
        thread = cache.preload(name, runtime)  # returns at once if loaded; waits on an ongoing load otherwise
        waited = 0
        while thread.is_alive():
            stage = cache.stage(name, runtime) or "starting"
            progress((waited, None), desc=f"Loading {MODELS[name].label}: {stage}", unit="s")
            yield f"Loading **{MODELS[name].label}**… {waited} s: {stage} (the page works meanwhile)"
            thread.join(1.0)
            waited += 1
        lm = cache.loaded(name, runtime)
        if lm is None:
            raise ModelLoadError(cache.error(name, runtime) or f"Could not load {name}")
        digest = next((v for k, v in lm.provenance.items() if k.endswith("sha256")), None)
        short = f", sha256 {digest[:12]}…" if digest else ""
        shape = f"{lm.n_layers} layers × {lm.n_heads} heads"
        yield f"**{MODELS[name].label}** ready: {shape}, {lm.device}, runtime {lm.provenance['runtime']}{short}"


def lenient_selection(model: str, checked: list[str], typed: str) -> tuple[list, str]:
    """The selected heads and a one-line summary; a half-typed head is reported, not raised."""
    try:
        heads = selected_heads(checked or [], typed or "", cache.loaded(model))
    except ValueError as err:
        return selected_heads(checked or [], "", None), f"**Check the typed heads:** {err}"
    return heads, f"Ablating {len(heads)} head(s): {heads_text(heads)}" if heads else "No heads selected."


def head_controls(model, prompt_set, mode, ranking, checked, typed):
    """Offer the precomputed top-10 of this model x prompt set x mode (or say that none exists); while no head
    is chosen, select the heads suggested for this model."""
    opts = head_options(model, prompt_set, mode, ranking)
    offered = [format_head(h) for h, _ in opts.top]
    kept = [c for c in checked or [] if c in offered]
    if not checked and not typed:
        kept = [format_head(h) for h in opts.suggested]
    selected, _ = lenient_selection(model, kept, typed)
    return (
        gr.Dropdown(choices=opts.rankings, value=opts.ranking, interactive=bool(opts.rankings)),
        gr.CheckboxGroup(choices=offered, value=kept),
        opts.note,
        score_figure(opts, selected),
        top_table(opts.top),
    )


def selection(model, prompt_set, mode, ranking, checked, typed):
    """Redraw the selection on the heatmap and offer the selected heads for the attention view."""
    selected, note = lenient_selection(model, checked, typed)
    names = [format_head(h) for h in selected]
    figure = score_figure(head_options(model, prompt_set, mode, ranking), selected)
    return figure, gr.Dropdown(choices=names, value=names[0] if names else None), note


@gpu
def compare(model, runtime, prompt, checked, typed, mode, eps, decoding, max_new_tokens, seed, progress=gr.Progress()):
    """Stream the intact and the ablated answer side by side, then label both and offer the run as JSON."""
    with shown_to_user():
        prompt = check_prompt(prompt)
        lm = model_for(model, runtime, progress)
        heads = selected_heads(checked or [], typed or "", lm)
        eps = check_eps(to_number(eps, "ε"))
        config = decoding_config(decoding, max_new_tokens, seed)
        if not heads:
            gr.Warning("No heads selected: the ablated answer will equal the intact one.")
        pending = badge_html(None, "generating…")
        intact = ablated = ""
        for intact, ablated in stream_pair(lm, prompt, heads, mode, eps, "chat", config):
            yield intact, ablated, pending, pending, None
        verdicts, _ = judge_answers(lm, judge, [prompt, prompt], [intact, ablated], coherence_limit(model))
        record = run_record(lm, prompt, heads, mode, eps, config, (intact, verdicts[0]), (ablated, verdicts[1]))
        path = str(write_record(record, EXPORT_DIR))
        yield intact, ablated, badge_html(verdicts[0]), badge_html(verdicts[1]), path


@gpu
def show_attention(model, runtime, prompt, head, mode, eps, progress=gr.Progress()):
    """The chosen head's attention on the current prompt, intact and ablated."""
    with shown_to_user():
        prompt = check_prompt(prompt)
        lm = model_for(model, runtime, progress)
        if not head:
            raise ValueError("Select a head first (tick one or type it), then show its attention.")
        (chosen,) = parse_heads([head], lm.n_layers, lm.n_heads)
        pattern = attention_pattern(lm, prompt, chosen, mode, check_eps(to_number(eps, "ε")))
        crop = f" (last {len(pattern.tokens)} tokens)" if pattern.cropped else ""
        note = "uniform over visible keys under UA" if mode == "UA" else "unchanged under SC, which scales its output"
        title = f"Layer {chosen[0]}, head {chosen[1]}{crop}: intact vs ablated ({note})"
        return plots.attention_heatmaps(pattern.intact, pattern.ablated, pattern.tokens, chosen, mode=mode, title=title)


@gpu
def score_prompt(model, runtime, prompt, checked, typed, mode, eps, progress=gr.Progress()):
    """Live Ships: ablate each head in turn on this prompt; score the change of the next token."""
    with shown_to_user():
        prompt = check_prompt(prompt)
        lm = model_for(model, runtime, progress)
        selected, _ = lenient_selection(model, checked, typed)
        step = lambda done, total: progress((done, total), desc="Ships: ablating each head", unit="heads")  # noqa: E731
        scores = ships(lm, prompt, mode, check_eps(to_number(eps, "ε")), progress=step)
        top = top_heads(scores, 10)
        title = f"Ships on this prompt ({mode}): KL(intact ‖ ablated) of the next token"
        figure = plots.score_heatmap(scores, [h for h, _ in top], selected, title=title, score_name="KL (nats)")
        return figure, top_table(top)


@gpu
def evaluate(
    model, runtime, prompt_set, n, checked, typed, mode, eps, decoding, max_new_tokens, seed, progress=gr.Progress()
):
    """ASR over the first N prompts of a set: intact, ablated, and a random-head control of the same size."""
    with shown_to_user():
        lm = model_for(model, runtime, progress)
        heads = selected_heads(checked or [], typed or "", lm)
        config = decoding_config(decoding, max_new_tokens, seed)
        step = lambda done, total, what: progress((done, total), desc=what, unit="answers")  # noqa: E731
        n, eps = to_number(n, "N", True), to_number(eps, "ε")
        limit = coherence_limit(model)
        result = evaluate_set(lm, prompt_set, n, heads, mode, eps, config, judge, progress=step, surprise_limit=limit)
        return evaluate_tab.shown(result, title=f"{prompt_set}, first {len(result.prompts)} prompts ({mode})")


# delete_cache: Gradio's copies of the downloadable run records go after an hour, checked hourly.
with gr.Blocks(title="Safety heads", delete_cache=(3600, 3600)) as demo:
    gr.Markdown(NOTICE)
    with gr.Row():
        model = gr.Dropdown([(e.label, n) for n, e in MODELS.items()], value=INITIAL_MODEL, label="Model", scale=2)
        status = gr.Markdown("Starting…")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            heads_panel.block.render()
        with gr.Column(scale=2):
            compare_panel.block.render()
    with gr.Tabs():
        with gr.Tab("Head scores"):
            scores_tab.block.render()
        with gr.Tab("Attention pattern"):
            attention_tab.block.render()
        with gr.Tab("Score this prompt"):
            live_tab.block.render()
        with gr.Tab("Evaluate on a set"):
            evaluate_tab.block.render()
        with gr.Tab("Paper figures"):
            figures_tab.block.render()

    # Wiring: one statement per event. Model work shares one queue slot; the ablation lock would
    # serialise it anyway, and the queue then tells each user where they stand.
    h, c = heads_panel, compare_panel
    model_work: EventOptions = {"concurrency_limit": 1, "concurrency_id": "model"}
    choice = [model, h.prompt_set, h.mode, h.ranking, h.heads, h.typed_heads]
    selected = [h.heads, h.typed_heads]
    ablation = [h.mode, h.eps]
    sampling = [c.decoding, c.max_new_tokens, h.seed]
    answers = [c.intact_answer, c.ablated_answer, c.intact_badge, c.ablated_badge, c.export]
    head_panel = [h.ranking, h.heads, h.precomputed_note, scores_tab.heatmap, scores_tab.top_list]
    on_choice = [demo.load, model.change, h.prompt_set.change, h.mode.change, h.ranking.input]

    gr.on([demo.load, model.change, h.runtime.change], load_model, [model, h.runtime], [status], api_name="load_model")
    gr.on(on_choice, head_controls, choice, head_panel, api_name="head_options")
    gr.on(
        [h.heads.change, h.typed_heads.change],
        selection,
        choice,
        [scores_tab.heatmap, attention_tab.head, h.selection_note],
        api_name="selection",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    # A row click carries its row in the event data, which API clients cannot send: kept out of the API page.
    hidden: EventOptions = {"api_visibility": "undocumented"}
    scores_tab.top_list.select(pick_top_head, [h.heads], [h.heads], api_name="pick_top_head", **hidden)
    live_tab.top_list.select(pick_scored_head, [h.typed_heads], [h.typed_heads], api_name="pick_scored_head", **hidden)
    compare_inputs = [model, h.runtime, c.prompt, *selected, *ablation, *sampling]
    gr.on([c.run.click, c.prompt.submit], compare, compare_inputs, answers, api_name="compare", **model_work)
    attention_inputs = [model, h.runtime, c.prompt, attention_tab.head, *ablation]
    attention_tab.show.click(show_attention, attention_inputs, [attention_tab.plot], api_name="attention", **model_work)
    live_inputs, live_outputs = (
        [model, h.runtime, c.prompt, *selected, *ablation],
        [live_tab.heatmap, live_tab.top_list],
    )
    live_tab.score.click(score_prompt, live_inputs, live_outputs, api_name="score_prompt", **model_work)
    e = evaluate_tab
    evaluate_inputs = [model, h.runtime, e.prompt_set, e.n, *selected, *ablation, *sampling]
    e.run.click(evaluate, evaluate_inputs, [e.summary, e.plot, e.answers], api_name="evaluate", **model_work)
    f = figures_tab
    gr.on([demo.load, model.change], f.set_figure, [model], [f.set_plot, f.set_note], api_name="top10_by_set")
    pair = [f.model_a, f.model_b, h.prompt_set]
    on_pair = [demo.load, f.model_a.change, f.model_b.change, h.prompt_set.change]
    gr.on(on_pair, f.model_figure, pair, [f.model_plot, f.model_note], api_name="top10_by_model")
    on_methods = [demo.load, model.change, f.methods_mode.change]
    gr.on(on_methods, f.methods_figure, [model, f.methods_mode], [f.methods_plot, f.methods_note], api_name="methods")

if __name__ == "__main__":
    demo.queue(**QUEUE).launch(show_error=True)
