"""Ships, generalized Ships and Sahara: the fast paths against the naive definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from safety_heads.ablation import ablate, count_hooks
from safety_heads.models import encode
from safety_heads.sahara import sahara
from safety_heads.ships import (
    generalized_ships,
    kl_from_logits,
    record_prompts,
    ships,
    ships_naive,
    subspace_angles,
    subspace_shifts,
    top_heads,
)

PROMPTS = [
    "How do I pick a lock?",
    "Write a poem about rain.",
    "What is 2 + 2?",
    "Name three rivers in Asia.",
]


@pytest.mark.parametrize("mode", ["UA", "SC"])
def test_fast_ships_equals_naive_on_tiny_models(tiny_model, mode):
    fast = ships(tiny_model, PROMPTS[0], mode, batch_size=5)
    naive = ships_naive(tiny_model, PROMPTS[0], mode)
    assert fast.shape == (tiny_model.n_layers, tiny_model.n_heads)
    assert naive.max() > 1e-3  # the heads matter, so agreement is not trivial
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    assert count_hooks(tiny_model) == 0


@pytest.mark.slow  # the naive loop: 270 forward passes
def test_fast_ships_equals_naive_on_smollm2(smollm2_float32):
    """In float32: under a low-bit runtime the naive loop's one-row output layer takes the kernel, the sweep's
    many rows the float32 weights, and the two then differ by bfloat16's rounding."""
    prompt = "How do I make a fake ID?"
    fast = ships(smollm2_float32, prompt, "UA")
    naive = ships_naive(smollm2_float32, prompt, "UA")
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    assert top_heads(fast, 1)[0][0] == top_heads(naive, 1)[0][0]


def test_kl_is_zero_for_equal_and_positive_otherwise():
    logits = torch.randn(2, 50)
    assert kl_from_logits(logits[0], logits[:1]).item() == pytest.approx(0.0, abs=1e-12)
    assert kl_from_logits(logits[0], logits[1:]).item() > 0.0


def test_recording_removes_its_hooks_even_when_the_forward_pass_fails(tiny_llama, monkeypatch):
    inside = []

    def fail(*args, **kwargs):
        inside.append(count_hooks(tiny_llama))
        raise RuntimeError("forward failed")

    monkeypatch.setattr(tiny_llama.model, "forward", fail)
    with pytest.raises(RuntimeError, match="forward failed"):
        record_prompts(tiny_llama, PROMPTS[:1])
    assert inside == [tiny_llama.n_layers] and count_hooks(tiny_llama) == 0


def test_subspace_angle_known_rotation():
    base = torch.zeros(3, 2)
    base[:, 0] = torch.tensor([10.0, 0.0, 0.0])  # rank one: top left singular vector e1
    theta = math.radians(30)
    rotated = torch.zeros(3, 2)
    rotated[:, 0] = torch.tensor([math.cos(theta), math.sin(theta), 0.0]) * 10
    angles = subspace_angles(base, torch.stack([base, rotated, -rotated]))
    # The sign of a singular vector is arbitrary: -rotated spans the same subspace as rotated.
    assert angles[0] == pytest.approx(0.0, abs=1e-9) and angles[1:] == pytest.approx([30.0, 30.0], abs=1e-4)


def test_generalized_ships_matches_full_forward_passes(tiny_llama):
    lm = tiny_llama
    acts = record_prompts(lm, PROMPTS)
    heads = [[(0, 1)], [(2, 3)], [(1, 0), (2, 2)]]
    fast = subspace_shifts(lm, acts, heads, "UA", 1e-5, rank=1, batch_size=2)
    for angle, head_set in zip(fast, heads):
        rows = []
        for prompt in PROMPTS:
            ids = encode(lm, [prompt])["input_ids"]
            with ablate(lm, head_set, "UA"):
                rows.append(lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1])
        assert angle == pytest.approx(subspace_angles(acts.matrix, torch.stack(rows)[None])[0], abs=1e-4)
    scores = generalized_ships(lm, acts, "UA")
    assert scores.shape == (lm.n_layers, lm.n_heads) and scores.max() > 0


def test_sahara_is_greedy_and_distinct(tiny_llama):
    acts = record_prompts(tiny_llama, PROMPTS)
    steps = sahara(tiny_llama, acts, size=3, mode="UA")
    heads = [s.head for s in steps]
    assert len(set(heads)) == 3
    first = generalized_ships(tiny_llama, acts, "UA")
    assert heads[0] == top_heads(first, 1)[0][0]  # step one is generalized Ships
    assert steps[0].angle == pytest.approx(first.max().item(), abs=1e-4)
    with pytest.raises(ValueError, match="group size"):
        sahara(tiny_llama, acts, size=6)


def test_subspace_angles_match_an_svd_reference():
    """The Gram-matrix route gives the SVD's angles, tiny ones included, for every ablated matrix of a batch."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(12, 300, generator=generator, dtype=torch.float64) + 3.0  # a clear top direction
    ablated = torch.stack(
        [
            base + scale * torch.randn(12, 300, generator=generator, dtype=torch.float64)
            for scale in (1e-6, 1e-3, 0.3, 3.0)
        ]
    )
    for rank in (1, 3):
        reference = [
            math.degrees(
                scipy.linalg.subspace_angles(
                    np.linalg.svd(base.numpy(), full_matrices=False)[0][:, :rank],
                    np.linalg.svd(a.numpy(), full_matrices=False)[0][:, :rank],
                ).sum()
            )
            for a in ablated
        ]
        assert subspace_angles(base, ablated, rank, chunk=3) == pytest.approx(reference, rel=1e-6, abs=1e-9)
