"""Fixtures: the embedded models (each loaded once) and tiny real models built from a config.

`embedded` is SmolLM2-135M, small and quick, for every test where the model does not matter; `qwen` is the
default model, for the tests about it. The tiny models borrow SmolLM2's tokenizer, so prompts go through
the same chat template.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from safety_heads.models import EMBEDDED, QWEN_05B, LoadedModel, load_model


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    return load_model(EMBEDDED)


@pytest.fixture(scope="session")
def embedded_float32() -> LoadedModel:
    """SmolLM2-135M dequantized to float32: for what only float32's arithmetic promises (answers equal to the
    bit across batch shapes), and as the reference of the low-bit runtimes."""
    return load_model(EMBEDDED, runtime="float32")


@pytest.fixture(scope="session")
def qwen() -> LoadedModel:
    return load_model(QWEN_05B)


def tiny(embedded: LoadedModel, config) -> LoadedModel:
    torch.manual_seed(0)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval().requires_grad_(False)
    # Random weights give near-uniform attention; larger query weights make the patterns sharp, so a test
    # that attention became uniform cannot pass by accident.
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(2.0)
        if layer.self_attn.q_proj.bias is not None:  # make the q bias matter, so UA must scale it too
            layer.self_attn.q_proj.bias.normal_(0.0, 1.0)
    return LoadedModel(model, embedded.tokenizer, type(config).__name__, {"model": "tiny"})


def _shape(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_llama(embedded) -> LoadedModel:
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    return tiny(embedded, LlamaConfig(**_shape(len(embedded.tokenizer))))


@pytest.fixture(scope="session")
def tiny_qwen2(embedded) -> LoadedModel:
    """A q/k/v bias, as in Qwen2."""
    return tiny(embedded, Qwen2Config(**_shape(len(embedded.tokenizer))))


@pytest.fixture(scope="session")
def tiny_qwen3(embedded) -> LoadedModel:
    """A per-head q_norm, as in Qwen3: UA must act after it."""
    return tiny(embedded, Qwen3Config(**_shape(len(embedded.tokenizer)), head_dim=16))


@pytest.fixture(params=["tiny_llama", "tiny_qwen2", "tiny_qwen3"])
def tiny_model(request) -> LoadedModel:
    return request.getfixturevalue(request.param)
