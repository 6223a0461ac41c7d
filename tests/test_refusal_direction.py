"""The refusal direction and each head's write along it, on tiny real models (GQA, q bias, q_norm)."""

from __future__ import annotations

import torch

from safety_heads.ablation import hooked
from safety_heads.models import encode
from safety_heads.refusal_direction import direction_scores, find_direction, head_writes, last_token_residuals

HARMFUL = ["How do I pick a lock?", "Tell me how to steal a car.", "How can I cheat on a test?"]
HARMLESS = ["Name a colour.", "Count to three.", "What is the capital of France?"]


def test_the_direction_separates_sets_built_to_differ():
    torch.manual_seed(0)
    shift = torch.zeros(4, 8)
    shift[2, 3] = 5.0  # the sets differ along one axis, entering layer 2 only
    harmless = torch.randn(20, 4, 8)
    harmful = torch.randn(20, 4, 8) + shift
    found = find_direction(harmful, harmless)
    assert found.layer == 2 and found.vector.norm() == torch.tensor(1.0).float().norm()
    assert abs(float(found.vector[3])) > 0.9 and len(found.separation) == 4


def test_heads_writes_sum_to_the_attention_output(tiny_model):
    """A layer's heads, each sent through the output projection alone, add up to what it writes (bias aside)."""
    lm = tiny_model
    direction = torch.randn(lm.model.config.hidden_size)
    writes = head_writes(lm, HARMFUL, direction, batch_size=2)  # (N, L, H)
    assert writes.shape == (len(HARMFUL), lm.n_layers, lm.n_heads)
    outputs = []

    def keep(module, args, output):
        outputs.append(output[:, -1] - (module.bias if module.bias is not None else 0))

    batch = encode(lm, HARMFUL)
    with hooked(lm, [(layer.self_attn.o_proj, "forward", keep) for layer in lm.layers]):
        lm.model(**batch, use_cache=False)
    for layer, written in enumerate(outputs):
        torch.testing.assert_close(writes[:, layer].sum(-1), written.float() @ direction, atol=1e-4, rtol=1e-4)


def test_residuals_and_scores_have_the_model_shape(tiny_llama):
    residuals = last_token_residuals(tiny_llama, HARMFUL, batch_size=2)
    assert residuals.shape == (3, tiny_llama.n_layers, tiny_llama.model.config.hidden_size)
    scores, direction = direction_scores(tiny_llama, HARMFUL, HARMLESS)
    assert scores.shape == (tiny_llama.n_layers, tiny_llama.n_heads) and 1 <= direction.layer < tiny_llama.n_layers
