"""Fixtures: tiny real models built from a config, for the fast tests; the packaged models, for the slow ones.

The tiny models (`tiny_llama`, `tiny_qwen2`, `tiny_qwen3`; `tiny_model` is each in turn) have random weights
and share `chat_tokenizer`, a byte-level BPE tokenizer with a ChatML template built in code
(`tests/tiny_tokenizer.py`), so prompts go through a chat template and no model file is read.
`smollm2` is SmolLM2-135M (small and quick) and `smollm2_float32` the same dequantized to float32, for the
slow tests where a real model's answers are the point; `qwen` is the default model, for the tests about it.
Each is loaded once, on first use.

Fast tests load no model file: a test not marked slow fails if it asks for one of the packaged models, or if
anything it calls reaches a packaged model's GGUF (`fast_tests_read_no_model_file`).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen3Config

from safety_heads import models, packaged
from safety_heads.models import PACKAGED, QWEN_05B, SMOLLM2_135M, LoadedModel, load_model

from .tiny_tokenizer import chat_tokenizer as build_chat_tokenizer

PACKAGED_MODELS = {"smollm2", "smollm2_float32", "qwen"}  # the fixtures that load a model file


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse a fast test that asks for a packaged model, before its fixtures load it."""
    wanted = PACKAGED_MODELS & set(getattr(item, "fixturenames", ()))
    if wanted and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} loads {', '.join(sorted(wanted))} but is not marked slow", pytrace=False)


@pytest.fixture(autouse=True)
def fast_tests_read_no_model_file(request):
    """Outside slow tests, finding a packaged model's GGUF (the first step of loading it) is recorded, and the
    test fails at teardown even where the code under test caught the error (as the app's model cache does)."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    reached: list[str] = []
    real_files = list(PACKAGED.values())
    find = packaged.gguf_path

    def guarded(spec, *args, **kwargs):
        if spec in real_files:
            reached.append(spec.packages[0])
            raise AssertionError(f"a fast test reached the model file in {spec.packages[0]}")
        return find(spec, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packaged, "gguf_path", guarded)
        mp.setattr(models, "gguf_path", guarded)
        yield
    assert not reached, f"a fast test reached a model file ({', '.join(reached)}): mark it slow or use a tiny model"


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model(SMOLLM2_135M)


@pytest.fixture(scope="session")
def smollm2_float32() -> LoadedModel:
    """SmolLM2-135M dequantized to float32: for what only float32's arithmetic promises (answers equal to the
    bit across batch shapes), and as the reference of the low-bit runtimes."""
    return load_model(SMOLLM2_135M, runtime="float32")


@pytest.fixture(scope="session")
def qwen() -> LoadedModel:
    return load_model(QWEN_05B)


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerBase:
    return build_chat_tokenizer()


def tiny(tokenizer: PreTrainedTokenizerBase, config) -> LoadedModel:
    torch.manual_seed(0)
    config._attn_implementation = "eager"
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id  # generation stops
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval().requires_grad_(False)
    # Random weights give near-uniform attention; larger query weights make the patterns sharp, so a test
    # that attention became uniform cannot pass by accident.
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(2.0)
        if layer.self_attn.q_proj.bias is not None:  # make the q bias matter, so UA must scale it too
            layer.self_attn.q_proj.bias.normal_(0.0, 1.0)
    return LoadedModel(model, tokenizer, type(config).__name__, {"model": "tiny", "runtime": "float32"})


def _shape(vocab_size: int) -> dict:
    sizes = dict(hidden_size=64, intermediate_size=128, max_position_embeddings=1024)
    layout = dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    return dict(vocab_size=vocab_size, initializer_range=0.2, **sizes, **layout)


@pytest.fixture(scope="session")
def tiny_llama(chat_tokenizer) -> LoadedModel:
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    return tiny(chat_tokenizer, LlamaConfig(**_shape(len(chat_tokenizer))))


@pytest.fixture(scope="session")
def tiny_qwen2(chat_tokenizer) -> LoadedModel:
    """A q/k/v bias, as in Qwen2."""
    return tiny(chat_tokenizer, Qwen2Config(**_shape(len(chat_tokenizer))))


@pytest.fixture(scope="session")
def tiny_qwen3(chat_tokenizer) -> LoadedModel:
    """A per-head q_norm, as in Qwen3: UA must act after it."""
    return tiny(chat_tokenizer, Qwen3Config(**_shape(len(chat_tokenizer)), head_dim=16))


@pytest.fixture(params=["tiny_llama", "tiny_qwen2", "tiny_qwen3"])
def tiny_model(request) -> LoadedModel:
    return request.getfixturevalue(request.param)
