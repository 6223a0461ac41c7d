"""Undifferentiated Attention and Scaling Contribution, checked on tiny real models and on SmolLM2-135M."""

from __future__ import annotations

import copy

import pytest
import torch

from safety_heads.ablation import ablate, count_hooks, hooked, parse_heads
from safety_heads.models import LoadedModel, encode

PROMPT = "Explain how a bicycle stays upright while moving."


def forward(lm: LoadedModel, input_ids: torch.Tensor):
    return lm.model(input_ids=input_ids, output_attentions=True, use_cache=False)


def uniform_causal(T: int) -> torch.Tensor:
    """Row i attends 1/(i+1) to each of positions 0..i."""
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]


@pytest.mark.parametrize("head", [(0, 1), (1, 3), (2, 0)])
def test_ua_makes_head_attention_uniform(tiny_model, head):
    ids = encode(tiny_model, [PROMPT])["input_ids"]
    base = forward(tiny_model, ids)
    with ablate(tiny_model, [head], "UA"):
        ablated = forward(tiny_model, ids)
    layer, h = head
    T = ids.shape[1]
    # The test means something only if the intact head is far from uniform.
    assert (base.attentions[layer][0, h] - uniform_causal(T)).abs().max() > 0.05
    torch.testing.assert_close(ablated.attentions[layer][0, h], uniform_causal(T), atol=1e-4, rtol=0)
    others = [i for i in range(tiny_model.n_heads) if i != h]
    torch.testing.assert_close(ablated.attentions[layer][0, others], base.attentions[layer][0, others])
    for earlier in range(layer):
        torch.testing.assert_close(ablated.attentions[earlier], base.attentions[earlier], atol=0, rtol=0)


@pytest.mark.slow  # loads SmolLM2-135M; the tiny models are checked above
def test_ua_on_smollm2(smollm2):
    ids = encode(smollm2, [PROMPT])["input_ids"]
    with ablate(smollm2, [(18, 8)], "UA"):
        out = forward(smollm2, ids)
    torch.testing.assert_close(out.attentions[18][0, 8], uniform_causal(ids.shape[1]), atol=1e-4, rtol=0)


@pytest.mark.slow  # runs SmolLM2-135M again for each tiny model
def test_no_heads_gives_unhooked_logits_exactly(tiny_model, smollm2):
    for lm in (tiny_model, smollm2):
        ids = encode(lm, [PROMPT])["input_ids"]
        base = lm.model(input_ids=ids).logits
        for mode in ("UA", "SC"):
            with ablate(lm, [], mode):
                assert count_hooks(lm) == 0
                assert torch.equal(lm.model(input_ids=ids).logits, base)


def test_sc_equals_zeroing_o_proj_input_columns(tiny_model):
    ids = encode(tiny_model, [PROMPT])["input_ids"]
    layer, h = 1, 2
    with ablate(tiny_model, [(layer, h)], "SC", eps=1e-7):
        scaled = tiny_model.model(input_ids=ids).logits
    zeroed = copy.deepcopy(tiny_model.model)
    d = tiny_model.head_dim
    zeroed.model.layers[layer].self_attn.o_proj.weight[:, h * d : (h + 1) * d] = 0.0
    reference = zeroed(input_ids=ids).logits
    torch.testing.assert_close(scaled, reference, atol=1e-5, rtol=1e-5)
    assert (reference - tiny_model.model(input_ids=ids).logits).abs().max() > 1e-3  # the head mattered


def test_ua_scales_q_bias_too(tiny_qwen2):
    """With a q bias, scaling only the weight would leave q = b and the attention non-uniform."""
    attn = tiny_qwen2.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.q_proj.bias.abs().max() > 0.1
    ids = encode(tiny_qwen2, [PROMPT])["input_ids"]
    with ablate(tiny_qwen2, [(0, 0)], "UA"):
        out = forward(tiny_qwen2, ids)
    torch.testing.assert_close(out.attentions[0][0, 0], uniform_causal(ids.shape[1]), atol=1e-4, rtol=0)


def assert_rows_match_separate_runs(lm: LoadedModel, mode: str) -> None:
    """Each row of a batch that ablates other heads per row gives the logits of that ablation run alone."""
    ids = encode(lm, [PROMPT])["input_ids"]
    head_sets = [[], [(0, 1)], [(1, 0), (2, 3)]]
    with torch.no_grad():
        with ablate(lm, head_sets, mode, per_row=True):
            batched = lm.model(input_ids=ids.expand(3, -1)).logits
        for row, heads in enumerate(head_sets):
            with ablate(lm, heads, mode):
                alone = lm.model(input_ids=ids).logits[0]
            torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["UA", "SC"])
def test_batch_rows_match_separate_runs(tiny_model, mode):
    assert_rows_match_separate_runs(tiny_model, mode)


def test_hooks_removed_after_exit_exception_and_nesting(tiny_llama):
    lm = tiny_llama
    assert count_hooks(lm) == 0
    with ablate(lm, [(0, 0), (1, 1)], "UA"):
        assert count_hooks(lm) == 2
        with ablate(lm, [(2, 2)], "SC"):
            assert count_hooks(lm) == 3
        assert count_hooks(lm) == 2
    assert count_hooks(lm) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(lm, [(0, 0)], "SC"):
            assert count_hooks(lm) == 1
            raise RuntimeError("boom")
    assert count_hooks(lm) == 0


def test_hooked_removes_every_hook_after_errors_and_nesting(tiny_llama):
    lm = tiny_llama
    hooks = [(layer, "forward_pre_kwargs", lambda module, args, kwargs: None) for layer in lm.layers]
    with pytest.raises(RuntimeError, match="inside"), hooked(lm, hooks):
        assert count_hooks(lm) == lm.n_layers
        with ablate(lm, [(0, 0)], "SC"):
            assert count_hooks(lm) == lm.n_layers + 1
        assert count_hooks(lm) == lm.n_layers
        raise RuntimeError("inside")
    assert count_hooks(lm) == 0


def test_bad_ablations_raise_before_any_hook(tiny_llama):
    with pytest.raises(ValueError, match="eps"):
        with ablate(tiny_llama, [(0, 0)], "UA", eps=0.0):
            pass
    with pytest.raises(ValueError, match="outside"):
        with ablate(tiny_llama, [(0, 0), (7, 0)], "UA"):
            pass
    with pytest.raises(ValueError, match="mode"):
        with ablate(tiny_llama, [(0, 0)], "XX"):  # type: ignore[arg-type]
            pass
    assert count_hooks(tiny_llama) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18-8, 7-2", [(7, 2), (18, 8)]),
        ("L18H8 7.2", [(7, 2), (18, 8)]),
        ("18-8,18-8", [(18, 8)]),
        ("", []),
        (" 0-0 ;29-8 ", [(0, 0), (29, 8)]),
    ],
)
def test_parse_heads(text, expected):
    assert parse_heads(text, 30, 9) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("40-3", "outside the model"), ("abc", "Cannot read head"), ("3-9", "outside"), ("1--2", "Cannot read")],
)
def test_parse_heads_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_heads(text, 30, 9)


def test_parse_heads_caps_count():
    many = ", ".join(f"{layer}-{head}" for layer in range(30) for head in range(9))
    with pytest.raises(ValueError, match="at most"):
        parse_heads(many, 30, 9)
