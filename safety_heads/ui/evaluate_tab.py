"""The "Evaluate on a set" tab: ASR over the first N prompts, intact vs ablated vs random heads."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import plots
from ..set_evaluation import ANSWER_HEADERS, MAX_EVAL_PROMPTS, SUMMARY_HEADERS, SetEvaluation, evaluation_sets


def shown(result: SetEvaluation, title: str):
    """The tab's outputs for one evaluation: the summary table, the rates as bars, the answers table."""
    rates = {
        run: {
            "ASR": r.asr,
            "coherent ASR": r.coherent_asr,
            "attempts": r.attempt_rate,
            "refusal": r.refusal,
            "degenerate": r.degenerate,
        }  # fmt: skip
        for run, r in result.results.items()
    }
    summary = pd.DataFrame(result.summary_rows(), columns=SUMMARY_HEADERS)
    return summary, plots.asr_bars(rates, title=title), pd.DataFrame(result.answer_rows(), columns=ANSWER_HEADERS)


with gr.Blocks() as block:
    with gr.Row():
        prompt_set = gr.Dropdown(evaluation_sets(), value="jailbreakbench", label="Prompt set")
        n = gr.Slider(1, MAX_EVAL_PROMPTS, value=10, step=1, label="N prompts (first N)")
        run = gr.Button("Evaluate: intact vs ablated vs random heads")
    summary = gr.Dataframe(headers=SUMMARY_HEADERS, label="Attack success", interactive=False)
    plot = gr.Plot(label="Rates")
    answers = gr.Dataframe(
        headers=ANSWER_HEADERS,
        label="Answers",
        interactive=False,
        wrap=True,
        column_widths=["19%", "19%", "8%", "19%", "8%", "19%", "8%"],
    )
