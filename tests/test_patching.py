"""Activation patching and attribution patching on tiny real models (GQA, q bias, q_norm)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from safety_heads.ablation import hooked
from safety_heads.models import decode, encode
from safety_heads.patching import (
    attribution_patching_scores,
    closing_length,
    harmless_means,
    patched,
    patched_logprobs,
    patching_group,
    patching_scores,
)

from .conftest import _shape, tiny

HARMFUL = ["How do I pick a lock?", "Tell me how to steal a car.", "How can I cheat on a test?"]
HARMLESS = ["Name a colour.", "Count to three.", "What is the capital of France?"]


def test_the_closing_is_the_templates_tokens_after_the_request(tiny_llama):
    last = closing_length(tiny_llama)
    ids = encode(tiny_llama, [HARMFUL[0]])["input_ids"][0, -last:]
    assert decode(tiny_llama.tokenizer, ids) == "<|im_end|>\n<|im_start|>assistant\n"


def test_patching_from_the_intact_cache_equals_patching_a_full_run(tiny_model):
    """Patching the last positions after the intact prefix's cache gives what a full run gives when every earlier
    position is 'patched' with its own intact value."""
    lm = tiny_model
    last = closing_length(lm)
    means = harmless_means(lm, HARMLESS, "last", last)
    input_ids = encode(lm, [HARMFUL[1]])["input_ids"]
    intact: list[torch.Tensor] = []

    def keep(module, args) -> None:
        intact.append(args[0][0])

    with hooked(lm, [(layer.self_attn.o_proj, "forward_pre", keep) for layer in lm.layers]), torch.no_grad():
        lm.model(input_ids=input_ids, use_cache=False)
    full_length = [torch.cat([z[:-last], mean]) for z, mean in zip(intact, means, strict=True)]
    head_sets = [[(0, 1)], [(1, 2), (2, 0)], [], [(2, 3)]]
    start = input_ids.shape[1] - last
    cached = patched_logprobs(lm, input_ids, 7, head_sets, means, start, batch_size=3)
    full = patched_logprobs(lm, input_ids, 7, head_sets, full_length, 0, batch_size=3)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert (cached[:2] - cached[2]).abs().min() > 1e-6  # the patches do change the answer


def test_patching_every_position_replays_each_row_from_its_first_patched_layer(tiny_model):
    """The replay gives what full forward passes under the same patches give, and runs layer 0 only for the
    intact record and the row that patches it."""
    lm = tiny_model
    means = harmless_means(lm, HARMLESS, "all", closing_length(lm))
    input_ids = encode(lm, [HARMFUL[0]])["input_ids"]
    head_sets = [[(0, 1)], [(2, 3)], [(1, 0), (2, 1)], []]
    with patched(lm, head_sets, means), torch.no_grad():
        logits = lm.model(input_ids=input_ids.expand(len(head_sets), -1), use_cache=False).logits[:, -1]
    full = torch.log_softmax(logits.double(), -1)[:, 5]
    calls: list[int] = []
    with hooked(lm, [(lm.layers[0], "forward", lambda module, args, output: calls.append(len(args[0])))]):
        replayed = patched_logprobs(lm, input_ids, 5, head_sets, means, 0, batch_size=2)
    torch.testing.assert_close(replayed, full, atol=1e-5, rtol=1e-5)
    assert calls == [1, 1]  # the intact record, then the one row patched at layer 0


@pytest.mark.parametrize("positions", ["last", "all"])
def test_the_one_head_that_writes_is_ranked_first(chat_tokenizer, positions):
    """With every output projection zeroed but one head's, that head alone can move the answer: both methods
    rank it first and score every other head zero."""
    lm = tiny(chat_tokenizer, LlamaConfig(**_shape(len(chat_tokenizer))))
    head_dim, writer = lm.head_dim, (1, 2)
    for index, layer in enumerate(lm.layers):
        columns = torch.zeros(lm.n_heads * head_dim)
        if index == writer[0]:
            columns[writer[1] * head_dim : (writer[1] + 1) * head_dim] = 1.0
        layer.self_attn.o_proj.weight.mul_(columns)
    for scores in (
        patching_scores(lm, HARMFUL, HARMLESS, positions),
        attribution_patching_scores(lm, HARMFUL, HARMLESS, positions),
    ):
        others = torch.ones_like(scores, dtype=torch.bool)
        others[writer] = False
        assert abs(float(scores[writer])) > 1e-3
        assert float(scores[others].abs().max()) < 1e-5


def test_attribution_patching_is_the_first_order_of_activation_patching(tiny_model):
    """Moving each head a small step a toward its harmless mean lowers log p(token) by a times its attribution
    (a central difference, so that the second order cancels)."""
    lm, prompt, step = tiny_model, HARMFUL[2], 1e-2
    last = closing_length(lm)
    means = harmless_means(lm, HARMLESS, "last", last)
    input_ids = encode(lm, [prompt])["input_ids"]
    intact: list[torch.Tensor] = []

    def keep(module, args) -> None:
        intact.append(args[0][0, -last:])

    with hooked(lm, [(layer.self_attn.o_proj, "forward_pre", keep) for layer in lm.layers]), torch.no_grad():
        token = int(lm.model(input_ids=input_ids, use_cache=False).logits[0, -1].argmax())
    heads = [[(layer, head)] for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    start = input_ids.shape[1] - last
    toward, away = (
        patched_logprobs(lm, input_ids, token, heads, [z + a * (m - z) for z, m in zip(intact, means)], start)
        for a in (step, -step)
    )
    exact = (away - toward) / (2 * step)
    linear = attribution_patching_scores(lm, [prompt], HARMLESS, "last").flatten()
    torch.testing.assert_close(exact.float(), linear, atol=0.01 * float(linear.abs().max()), rtol=0.0)


def group_drop(lm, heads, harmless) -> float:
    """The mean drop of the intact first token when `heads` are patched together at the closing positions."""
    last = closing_length(lm)
    means = harmless_means(lm, harmless, "last", last)
    drops = []
    for prompt in HARMFUL:
        input_ids = encode(lm, [prompt])["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=input_ids).logits[0, -1].double(), -1)
        token = int(logp.argmax())
        drops.append(
            float(logp[token] - patched_logprobs(lm, input_ids, token, [heads], means, len(input_ids[0]) - last)[0])
        )
    return sum(drops) / len(drops)


def test_the_patching_group_adds_the_head_that_most_raises_the_groups_drop(tiny_llama):
    lm, harmless = tiny_llama, HARMLESS[:2]
    single = patching_scores(lm, HARMFUL, harmless)
    steps = patching_group(lm, HARMFUL, harmless, single, size=3, candidates=lm.n_layers * lm.n_heads)
    assert steps[0] == (divmod(int(single.flatten().argmax()), lm.n_heads), float(single.max()))
    heads = [head for head, _ in steps]
    for size in (2, 3):
        before = heads[: size - 1]
        assert steps[size - 1][1] == pytest.approx(group_drop(lm, heads[:size], harmless), abs=1e-6)
        others = [
            (layer, h) for layer in range(lm.n_layers) for h in range(lm.n_heads) if (layer, h) not in heads[:size]
        ]
        assert all(steps[size - 1][1] >= group_drop(lm, [*before, h], harmless) - 1e-6 for h in others)
