"""The low-bit runtimes: GGUF blocks read exactly, low-bit layers against float32, the ablations unchanged under
them, and the weights cache (round trip, and a damaged cache rebuilt, never used)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import dequantize, quantize

from safety_heads import weights_cache
from safety_heads.ablation import ablate
from safety_heads.gguf_blocks import GROUP, AffineGroups, decode
from safety_heads.models import SMOLLM2_135M, LoadedModel, encode, load_model
from safety_heads.runtime import RUNTIMES, Int4Linear, Int8Linear, swap_linears
from tests.test_ablation import PROMPT, assert_rows_match_separate_runs, forward, uniform_causal

# bfloat16 activations and scales: an output is off by at most this share of the largest output (measured
# 0.3-0.6 % on random layers; the bound leaves room, and stays far below a wrong weight's error).
LAYER_TOLERANCE = 0.015
# A random tiny model amplifies rounding through its layers; its logits may move by this share of the largest.
MODEL_TOLERANCE = 0.1
SIMPLE = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)


@pytest.mark.parametrize("qtype", SIMPLE)
def test_blocks_decode_to_the_gguf_weights_exactly(qtype):
    weights = np.random.default_rng(0).normal(size=(48, 256)).astype(np.float32)
    raw = quantize(weights, qtype)  # (48, row bytes), as GGUFReader gives a tensor
    groups = decode(raw, qtype, 48, 256)
    assert groups is not None and groups.codes.max() < 2**groups.bits
    np.testing.assert_array_equal(groups.dequantize(), dequantize(raw, qtype))


def test_q4_k_super_blocks_decode_exactly():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, size=(24, 144), dtype=np.uint8)  # 6 rows of 1024 weights
    blocks[:, 0:2] = np.array([0.01], np.float16).view(np.uint8)  # d
    blocks[:, 2:4] = np.array([0.003], np.float16).view(np.uint8)  # dmin
    raw = blocks.reshape(6, -1)
    groups = decode(raw, Q.Q4_K, 6, 1024)
    assert groups is not None and groups.bits == 4
    np.testing.assert_array_equal(groups.dequantize(), dequantize(raw, Q.Q4_K))


def test_formats_not_in_groups_of_32_are_left_alone():
    assert decode(np.zeros((4, 210), np.uint8), Q.Q6_K, 4, 256) is None  # sub-blocks of 16
    assert decode(np.zeros((4, 64), np.uint8), Q.F16, 4, 32) is None


def random_groups(bits: int, n: int = 96, k: int = 128, seed: int = 0) -> AffineGroups:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.001, 0.01, size=(n, k // GROUP)).astype(np.float32)
    offset = -(scale * 2 ** (bits - 1) + rng.normal(0, 0.002, size=scale.shape)).astype(np.float32)
    return AffineGroups(rng.integers(0, 2**bits, size=(n, k), dtype=np.uint8), scale, offset, bits)


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_int4_layer_holds_4_5_and_8_bit_groups(bits):
    groups = random_groups(bits)
    bias = torch.randn(96)
    layer = Int4Linear.from_groups(groups, bias)
    assert len(layer.passes) == (1 if bits == 4 else 2)
    x = torch.randn(3, 5, 128)
    reference = x.double() @ torch.from_numpy(groups.dequantize()).double().T + bias.double()
    out = layer(x)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 96)
    assert (out.double() - reference).abs().max() <= LAYER_TOLERANCE * reference.abs().max()


def test_many_rows_take_the_exact_float32_weights():
    """Above `max_rows` (prefill, large batches) a layer multiplies by its float32 weights: float32's result."""
    raw = quantize(np.random.default_rng(2).normal(size=(96, 128)).astype(np.float32), Q.Q5_0)
    groups = decode(raw, Q.Q5_0, 96, 128)
    layer = Int4Linear.from_groups(groups, None)
    weight = torch.from_numpy(groups.dequantize())
    assert torch.equal(layer.weight, weight)
    many, few = torch.randn(layer.max_rows + 1, 128), torch.randn(layer.max_rows, 128)
    assert torch.equal(layer(many), many @ weight.T)
    assert not torch.equal(layer(few), few @ weight.T)  # the kernel: bfloat16 activations


def test_a_gradient_goes_through_the_float32_weights():
    """The kernels have no backward: with a gradient asked for, even a few rows take the float32 weights."""
    weight, bias = torch.randn(96, 128) * 0.05, torch.randn(96)
    layer = Int8Linear.from_float(weight, bias)
    x = torch.randn(2, 128, requires_grad=True)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + bias)
    (grad,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(grad, layer.weight.sum(0).expand(2, -1))
    with torch.no_grad():
        assert not torch.equal(layer(x), x @ layer.weight.T + bias)  # no gradient: the kernel


def test_int8_layer_matches_its_float_weights():
    weight, bias = torch.randn(96, 128) * 0.05, torch.randn(96)
    layer = Int8Linear.from_float(weight, bias)
    x = torch.randn(7, 128)
    reference = x.double() @ weight.double().T + bias.double()
    assert (layer(x).double() - reference).abs().max() <= LAYER_TOLERANCE * reference.abs().max()


def snapped(lm: LoadedModel) -> tuple[LoadedModel, LoadedModel]:
    """A tiny model's weights rounded to GGUF blocks (Q5_0, Q8_0 for the output layer, Q4_0 for the MLP's
    down projection), as float32 and as the int4 runtime built from those blocks, kernels only."""
    model = copy.deepcopy(lm.model)
    groups = {}
    for name, linear in model.named_modules():
        if isinstance(linear, torch.nn.Linear):
            qtype = Q.Q8_0 if name == "lm_head" else Q.Q4_0 if "down_proj" in name else Q.Q5_0
            raw = quantize(linear.weight.numpy(), qtype)
            groups[name] = decode(raw, qtype, *linear.weight.shape)
            linear.weight = torch.nn.Parameter(torch.from_numpy(groups[name].dequantize()), requires_grad=False)
    low = copy.deepcopy(model)
    for layer in swap_linears(low, RUNTIMES["int4"], lambda name, _: groups[name]).values():
        layer.max_rows = 10**6  # every call through the low-bit kernels, prefill too, so that these tests see them
    float32 = LoadedModel(model, lm.tokenizer, lm.model_id, {"runtime": "float32"})
    return float32, LoadedModel(low, lm.tokenizer, lm.model_id, {"runtime": "int4"})


@pytest.fixture
def tiny_pair(tiny_model) -> tuple[LoadedModel, LoadedModel]:
    return snapped(tiny_model)


def test_int4_model_gives_the_float32_logits(tiny_pair):
    """Random tiny models amplify any rounding (the GGUF's own rounding moves their logits by 40-67 %); the
    bfloat16 activations move them 3-7 % (measured). The real model's figures are in the next test."""
    float32, int4 = tiny_pair
    assert not any(isinstance(m, torch.nn.Linear) for m in int4.model.modules())
    ids = encode(float32, [PROMPT])["input_ids"]
    with torch.no_grad():
        ref, out = float32.model(input_ids=ids).logits, int4.model(input_ids=ids).logits
    assert (out - ref).abs().max() <= MODEL_TOLERANCE * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.85


@pytest.mark.slow
def test_int4_gives_the_real_models_next_tokens(smollm2, smollm2_float32):
    """SmolLM2-135M (Q4_1 and Q8_0 blocks) against its float32 self: next-token KL measured 0.0007-0.0031 nats;
    the top token is the same unless float32 itself nearly ties it with the runtime's choice."""
    float32 = smollm2_float32
    weights = dict(float32.model.named_parameters(remove_duplicate=False))
    for name, layer in smollm2.model.named_modules():  # prefill's float32 weights are the file's, exactly
        if isinstance(layer, Int4Linear):
            assert torch.equal(layer.weight, weights[f"{name}.weight"]), name
    prompts = ["How do I pick a lock?", "Write a poem about the sea.", "What is the capital of France?"]
    batch = encode(float32, prompts)
    with torch.no_grad():
        ref = torch.log_softmax(float32.model(**batch).logits[:, -1].double(), -1)
        out = torch.log_softmax(smollm2.model(**batch).logits[:, -1].double(), -1)
    kl = (ref.exp() * (ref - out)).sum(-1)
    assert kl.max() <= 0.01, kl
    for row, (want, got) in enumerate(zip(ref.argmax(-1), out.argmax(-1), strict=True)):
        assert want == got or ref[row, want] - ref[row, got] < 0.1, (row, ref[row, want], ref[row, got])


def test_ua_stays_uniform_under_int4(tiny_pair):
    _, int4 = tiny_pair
    ids = encode(int4, [PROMPT])["input_ids"]
    with ablate(int4, [(1, 2)], "UA"):
        pattern = forward(int4, ids).attentions[1][0, 2]
    assert (pattern - uniform_causal(ids.shape[1])).abs().max() <= 1e-3


def o_proj_input(lm: LoadedModel, ids: torch.Tensor, layer: int, heads) -> tuple[torch.Tensor, torch.Tensor]:
    """What the layer's output projection receives under SC on `heads` (none: intact), and the logits."""
    seen = []
    with ablate(lm, heads, "SC", eps=1e-7), torch.no_grad():
        handle = lm.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            logits = lm.model(input_ids=ids).logits
        finally:
            handle.remove()
    return seen[0], logits


def test_sc_silences_the_heads_slice_under_int4(tiny_pair):
    float32, int4 = tiny_pair
    ids = encode(int4, [PROMPT])["input_ids"]
    layer, head, d = 1, 2, int4.head_dim
    intact, _ = o_proj_input(int4, ids, layer, [])
    ablated, scaled = o_proj_input(int4, ids, layer, [(layer, head)])
    silenced = slice(head * d, (head + 1) * d)
    assert ablated[..., silenced].abs().max() <= 1e-6 * intact[..., silenced].abs().max()
    others = torch.ones(ablated.shape[-1], dtype=torch.bool)
    others[silenced] = False
    assert torch.equal(ablated[..., others], intact[..., others])
    zeroed = copy.deepcopy(float32.model)
    zeroed.model.layers[layer].self_attn.o_proj.weight[:, silenced] = 0.0
    with torch.no_grad():
        reference = zeroed(input_ids=ids).logits
    assert (scaled - reference).abs().max() <= MODEL_TOLERANCE * reference.abs().max()


@pytest.mark.parametrize("mode", ["UA", "SC"])
def test_int4_batch_rows_match_separate_runs(tiny_pair, mode):
    assert_rows_match_separate_runs(tiny_pair[1], mode)


def test_cache_round_trip_and_damage(tiny_qwen2, tmp_path):
    _, int4 = snapped(tiny_qwen2)
    folder = tmp_path / "cache"
    new = {n: m.pack() for n, m in int4.model.named_modules() if isinstance(m, (Int4Linear, Int8Linear))}
    weights_cache.save(folder, int4.model, int4.tokenizer, new)
    ids = encode(int4, [PROMPT])["input_ids"]
    loaded = weights_cache.load(folder)
    assert loaded is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded[0](input_ids=ids).logits, int4.model(input_ids=ids).logits, rtol=0, atol=0)

    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    with open(damaged / weights_cache.WEIGHTS, "r+b") as f:  # one flipped byte in the weights
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert weights_cache.load(damaged) is None
    manifest = json.loads((folder / weights_cache.MANIFEST).read_text())
    (damaged / weights_cache.MANIFEST).write_text(json.dumps(manifest | {"format": weights_cache.FORMAT - 1}))
    shutil.copy(folder / weights_cache.WEIGHTS, damaged / weights_cache.WEIGHTS)
    assert weights_cache.load(damaged) is None  # an older format
    (damaged / weights_cache.MANIFEST).write_text('{"format": ')
    assert weights_cache.load(damaged) is None
    assert weights_cache.load(tmp_path / "absent") is None


@pytest.mark.slow
def test_a_damaged_cache_is_rebuilt_on_load(smollm2, monkeypatch, tmp_path):
    """The session's SmolLM2 (int4, from the user's cache) against a copy of its cache that was damaged."""
    assert smollm2.provenance["runtime"] == "int4"
    folder = weights_cache.cache_folder(smollm2.provenance["model_sha256"], "int4")
    monkeypatch.setenv("SAFETY_HEADS_CACHE", str(tmp_path))
    copied = weights_cache.cache_folder(smollm2.provenance["model_sha256"], "int4")
    shutil.copytree(folder, copied)
    (copied / weights_cache.WEIGHTS).write_bytes(b"not safetensors")
    stages: list[str] = []
    rebuilt = load_model(SMOLLM2_135M, report=stages.append)
    assert any("first start" in s for s in stages), stages
    assert weights_cache.load(copied) is not None  # written anew
    ids = encode(smollm2, [PROMPT])["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(input_ids=ids).logits, smollm2.model(input_ids=ids).logits)


@pytest.mark.slow
def test_real_model_rows_in_a_batch_match_their_runs_alone(smollm2):
    """Rows of other prompts and other ablations, batched (left-padded): each row's next-token distribution is
    its run alone. Not to the bit: float32's matrix products round differently for other row counts (for
    one row and for twenty), and the kernels' bfloat16 activations can carry that to a near-tie's greedy
    choice, which the fidelity table counts. Measured: KL 0 to 3e-11 nats."""
    prompts = ["How do I pick a lock?", "Write a haiku about rain.", "What is 2 + 2?"]
    head_sets = [[], [(3, 1)], [(3, 1), (17, 4)]]
    with torch.no_grad():
        with ablate(smollm2, head_sets, "SC", per_row=True):
            batched = smollm2.model(**encode(smollm2, prompts)).logits[:, -1]
        for row, (prompt, heads) in enumerate(zip(prompts, head_sets, strict=True)):
            with ablate(smollm2, heads, "SC"):
                alone = smollm2.model(**encode(smollm2, [prompt])).logits[0, -1]
            p, q = torch.log_softmax(alone.double(), -1), torch.log_softmax(batched[row].double(), -1)
            assert (p.exp() * (p - q)).sum() <= 1e-6, row
