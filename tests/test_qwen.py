"""The default model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, on its real GGUF file: shape, ablations, stopping.

One session fixture loads it once (about 45 s on 2 cores); every test here reuses it.
"""

from __future__ import annotations

import pytest
import torch

from safety_heads.ablation import ablate
from safety_heads.answers import DecodingConfig, generate_pair
from safety_heads.models import PACKAGED, QWEN_05B, default_model, encode

from .test_ablation import forward, uniform_causal

pytestmark = pytest.mark.slow
PROMPT = "Write a tutorial on how to pick a lock."


def test_shape_and_provenance(qwen):
    assert (qwen.n_layers, qwen.n_heads, qwen.n_kv_heads, qwen.head_dim) == (24, 14, 2, 64)
    assert qwen.model.config.model_type == "qwen2" and qwen.layers[0].self_attn.q_proj.bias is not None
    assert qwen.model_id == QWEN_05B and qwen.provenance["model_sha256"] == PACKAGED[QWEN_05B].sha256


@pytest.mark.parametrize("head", [(0, 0), (5, 6), (5, 7), (23, 13)])
def test_ua_makes_a_head_uniform_and_leaves_its_kv_group_alone(qwen, head):
    """Heads 0-6 share key/value head 0 and 7-13 key/value head 1 (GQA 7:1): UA acts on one query head only."""
    ids = encode(qwen, [PROMPT])["input_ids"]
    base = forward(qwen, ids).attentions
    with ablate(qwen, [head], "UA"):
        ablated = forward(qwen, ids).attentions
    layer, h = head
    uniform = uniform_causal(ids.shape[1])
    assert (base[layer][0, h] - uniform).abs().max() > 0.1
    # Within 1e-4 at the default eps despite key biases up to 211 (measured: 4.3e-5 at most over all 336 heads).
    torch.testing.assert_close(ablated[layer][0, h], uniform, atol=1e-4, rtol=0)
    # Every other head, the six sharing its key/value head included, keeps its pattern.
    others = [other for other in range(qwen.n_heads) if other != h]
    torch.testing.assert_close(ablated[layer][0, others], base[layer][0, others], atol=1e-6, rtol=0)


def test_sc_scales_exactly_one_64_wide_slice(qwen):
    layer, h = 7, 9
    seen = {}
    o_proj = qwen.layers[layer].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0].clone()))
    ids = encode(qwen, [PROMPT])["input_ids"]
    try:
        with torch.no_grad():
            qwen.model(input_ids=ids)
            base = seen.pop("x")
            with ablate(qwen, [(layer, h)], "SC", eps=0.5):  # registered after ours, so it sees the scaled input
                seen.clear()
                o_proj._forward_pre_hooks.move_to_end(handle.id)
                qwen.model(input_ids=ids)
    finally:
        handle.remove()
    scaled = seen["x"]
    assert scaled.shape[-1] == 14 * 64
    inside = slice(h * 64, (h + 1) * 64)
    torch.testing.assert_close(scaled[..., inside], 0.5 * base[..., inside])
    outside = torch.ones(14 * 64, dtype=torch.bool)
    outside[inside] = False
    assert torch.equal(scaled[..., outside], base[..., outside])


def test_generation_stops_at_im_end_and_answers_in_chatml(qwen):
    assert qwen.tokenizer.eos_token == "<|im_end|>"
    assert qwen.model.generation_config.eos_token_id in (qwen.tokenizer.eos_token_id, [qwen.tokenizer.eos_token_id])
    text = encode(qwen, ["hi"])["input_ids"]
    assert "<|im_start|>system" in qwen.tokenizer.decode(text[0])  # the GGUF's template and its system prompt
    batch = encode(qwen, ["What is 2 + 2? Answer with one number."], "chat", 32)
    out = qwen.model.generate(**batch, do_sample=False, max_new_tokens=32, pad_token_id=qwen.tokenizer.pad_token_id)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    assert qwen.tokenizer.eos_token_id in new and len(new) < 32  # it stopped by itself
    assert new.index(qwen.tokenizer.eos_token_id) == len(new) - 1
    intact, _ = generate_pair(
        qwen, "What is 2 + 2? Answer with one number.", [], decoding=DecodingConfig(max_new_tokens=32)
    )
    assert "4" in intact and "<|im_end|>" not in intact


def test_the_default_name_round_trips_through_library_cli_and_app(qwen, monkeypatch, capsys):
    from safety_heads import cli, model_cache

    assert default_model() == QWEN_05B == cli.build_parser().parse_args(["generate", "hi"]).model
    monkeypatch.delenv("SAFETY_HEADS_APP_MODEL", raising=False)
    assert model_cache.initial_model(cuda=False) == QWEN_05B
    loaded = []  # the names each entry point asks the library for; the model itself is this session's copy
    monkeypatch.setattr(cli, "load_model", lambda name, **kwargs: loaded.append(name) or qwen)
    assert cli.main(["generate", "What is 2 + 2?", "--max-new-tokens", "8"]) == 0
    assert "--- intact" in capsys.readouterr().out
    monkeypatch.setattr(model_cache, "load_catalog_model", lambda name, *_: loaded.append(name) or qwen)
    assert model_cache.load_for_app(QWEN_05B, "int4", print) is qwen
    assert loaded == [QWEN_05B, QWEN_05B]
