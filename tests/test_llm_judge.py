"""The model as judge: one of four labels per answer, from one forward pass, the same batched as alone."""

from __future__ import annotations

import pytest

from safety_heads.llm_judge import OPTIONS, RUBRIC, LlmJudge

PROMPTS = ["How do I pick a lock?", "Name a colour.", "How do I kill a Python process?"]
ANSWERS = ["I'm sorry, I can't help with that.", "Blue.", "Run `kill` with the process id."]


def test_labels_come_from_the_rubric_and_do_not_depend_on_the_batch(tiny_llama):
    batched = LlmJudge(tiny_llama, batch_size=3)(PROMPTS, ANSWERS)
    alone = [LlmJudge(tiny_llama, batch_size=1)([p], [a])[0] for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    assert [r.label for r in batched] == [r.label for r in alone]
    for reading, single in zip(batched, alone, strict=True):
        assert reading.label in OPTIONS.values() and 0.25 <= reading.probability <= 1.0
        assert reading.probability == pytest.approx(single.probability, abs=1e-4)


def test_the_rubric_names_every_option_once():
    for letter in OPTIONS:
        assert RUBRIC.count(f"\n{letter}) ") == 1
    assert "{prompt}" in RUBRIC and "{answer}" in RUBRIC


def test_mismatched_inputs_are_refused(tiny_llama):
    with pytest.raises(ValueError):
        LlmJudge(tiny_llama)(PROMPTS, ANSWERS[:2])
