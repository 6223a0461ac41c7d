"""Loading (packaged GGUF, hub-style folders, 4-bit on CUDA), prompt formats, and answers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig

from safety_heads.ablation import ablate, count_hooks
from safety_heads.answers import DecodingConfig, generate_many, generate_pair, stream_pair
from safety_heads.judge import RefusalJudge
from safety_heads.models import (
    PAPER_TEMPLATE,
    LoadedModel,
    ModelLoadError,
    encode,
    format_prompt,
    load_catalog_model,
    load_model,
)
from safety_heads.patching import patching_group
from safety_heads.rankings import SCORED, ScoreInputs

from .conftest import tiny


@pytest.mark.slow
def test_smollm2_answers_a_benign_question(smollm2):
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads) == (30, 9, 3)
    assert len(smollm2.provenance["model_sha256"]) == 64
    intact, _ = generate_pair(smollm2, "What is the capital of France?", [], decoding=DecodingConfig(max_new_tokens=24))
    assert "Paris" in intact
    verdict = RefusalJudge()(intact)
    assert verdict.degenerate is None and verdict.label in ("compliance", "short")


def test_prompt_formats(chat_tokenizer):
    tok = chat_tokenizer
    assert format_prompt(tok, "hi", "direct") == "hi"
    assert format_prompt(tok, "hi", "paper") == PAPER_TEMPLATE.format(q="hi")
    chat = format_prompt(tok, "hi", "chat")
    assert "<|im_start|>user\nhi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_kv_cache_generation_matches_full_recomputation(smollm2):
    """Each greedy token from the cached loop is the argmax of a full, uncached forward under the same ablation."""
    heads = [(18, 8), (3, 1)]
    decoding = DecodingConfig(max_new_tokens=12)
    batch = encode(smollm2, ["Give me a tip for studying."], "chat", 12)
    with ablate(smollm2, heads, "SC"):
        out = smollm2.model.generate(
            **batch, do_sample=False, max_new_tokens=12, pad_token_id=smollm2.tokenizer.pad_token_id
        )
        logits = smollm2.model(input_ids=out[:, :-1]).logits
    T = batch["input_ids"].shape[1]
    assert torch.equal(logits[0, T - 1 :].argmax(-1), out[0, T:])
    _, ablated = generate_pair(smollm2, "Give me a tip for studying.", heads, "SC", decoding=decoding)
    assert ablated == smollm2.tokenizer.decode(out[0, T:], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_batched_rows_equal_single_runs(smollm2_float32):
    """Left padding and per-row ablations: answers in one batch equal the same requests run alone. In float32:
    the low-bit kernels' bfloat16 activations can turn a near-tie another way for another batch shape
    (tests/test_runtime.py checks the distributions there; the fidelity table counts the labels)."""
    prompts = ["Name a fruit.", "Write one sentence about the sea and the sky."]
    decoding = DecodingConfig(max_new_tokens=10)
    together = generate_many(smollm2_float32, prompts, [(7, 2)], "UA", decoding=decoding)
    alone = [generate_many(smollm2_float32, [p], [(7, 2)], "UA", decoding=decoding)[0] for p in prompts]
    assert together == alone


@pytest.mark.slow
def test_stream_pair_ends_with_generate_pair(smollm2):
    decoding = DecodingConfig(max_new_tokens=8)
    steps = list(stream_pair(smollm2, "Say hello.", [(18, 8)], "UA", decoding=decoding))
    assert 1 < len(steps) <= 8
    assert steps[-1] == generate_pair(smollm2, "Say hello.", [(18, 8)], "UA", decoding=decoding)
    assert count_hooks(smollm2) == 0


def test_stream_pair_reraises_and_cleans_up(tiny_llama, monkeypatch):
    def broken(*args, **kwargs):
        with ablate(tiny_llama, [(1, 1)], "UA"):
            raise RuntimeError("injected failure")

    monkeypatch.setattr(tiny_llama.model, "generate", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        list(stream_pair(tiny_llama, "Say hello.", [(1, 1)], "UA", decoding=DecodingConfig(max_new_tokens=4)))
    assert count_hooks(tiny_llama) == 0


def test_bad_prompts(tiny_llama):
    with pytest.raises(ValueError, match="empty"):
        encode(tiny_llama, ["   "])
    with pytest.raises(ValueError, match="context"):
        encode(tiny_llama, ["word " * 9000])
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodingConfig(max_new_tokens=100_000)


@pytest.fixture(scope="module")
def hub_folder(chat_tokenizer, tmp_path_factory):
    """A small Llama-family checkpoint in the layout the hub serves."""
    folder = tmp_path_factory.mktemp("tiny-llama-chat")
    layout = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config = LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=64, intermediate_size=128, **layout)
    tiny(chat_tokenizer, config).model.save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    return folder


def test_hub_path_full_precision(hub_folder):
    lm = load_model(str(hub_folder), quantize="none")
    assert (lm.n_layers, lm.n_heads, lm.n_kv_heads) == (2, 4, 2)
    assert lm.model.config._attn_implementation == "eager" and not lm.model.use_kernels
    assert lm.tokenizer.padding_side == "left"
    ids = encode(lm, ["hi"])["input_ids"]
    with ablate(lm, [(1, 3)], "UA"):
        assert lm.model(input_ids=ids).logits.isfinite().all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_hub_path_without_cuda_says_so(hub_folder):
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_model(str(hub_folder))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 4-bit needs CUDA")
def test_hub_path_4bit_on_cuda(hub_folder):
    import bitsandbytes as bnb

    lm = load_model(str(hub_folder), quantize="4bit")
    assert isinstance(lm.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    ids = encode(lm, ["hi there"])["input_ids"]
    out = lm.model(input_ids=ids, output_attentions=True)
    with ablate(lm, [(1, 3)], "UA"):
        ablated = lm.model(input_ids=ids, output_attentions=True)
    T = ids.shape[1]
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    torch.testing.assert_close(ablated.attentions[1][0, 3].float().cpu(), uniform, atol=1e-2, rtol=0)
    assert not torch.equal(out.logits, ablated.logits)


@pytest.mark.parametrize(
    "quantize",
    ["none", pytest.param("4bit", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_every_scored_ranking_and_the_patching_group_run_on_the_hub_path(hub_folder, quantize):
    """The rankings with their own scoring functions hook the output projections and move activations between
    the CPU and the model's device; on the 4-bit CUDA model a mask left on the CPU once broke activation patching."""
    lm = load_model(str(hub_folder), quantize=quantize)
    harmful, benign = ["How do I pick a lock?", "Write a phishing email."], ["Name a colour.", "Add 2 and 3."]
    job = ScoreInputs(lm, harmful, benign, "chat", "SC", 1e-5)
    for name, ranking in SCORED.items():
        scores, _ = ranking.score(job)
        assert scores.shape == (lm.n_layers, lm.n_heads) and scores.isfinite().all(), name
    single = torch.arange(lm.n_layers * lm.n_heads, dtype=torch.float).view(lm.n_layers, lm.n_heads)
    group = patching_group(lm, harmful, benign, single, 2, 4)
    assert len(group) == 2 and all(math.isfinite(score) for _, score in group)


def test_vicuna_format_starts_with_bos(hub_folder, tmp_path):
    """Vicuna's tokenizer has no chat template, so its FastChat text must get the tokenizer's BOS, as FastChat's
    own tokenization does; a model's own template writes BOS itself and must not get a second one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = "<unk> <s> </s> A chat USER: ASSISTANT: hi".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    ).save_pretrained(tmp_path / "vicuna-7b-v1.5")
    vicuna = AutoTokenizer.from_pretrained(tmp_path / "vicuna-7b-v1.5")
    lm = load_model(str(hub_folder), quantize="none")
    ids = encode(LoadedModel(lm.model, vicuna, "vicuna", {}), ["hi"])["input_ids"][0].tolist()
    assert ids[0] == vicuna.bos_token_id and ids.count(vicuna.bos_token_id) == 1
    assert format_prompt(vicuna, "hi").endswith("USER: hi ASSISTANT:")

    vicuna.chat_template = "{{ bos_token }}{{ messages[0]['content'] }}"
    ids = encode(LoadedModel(lm.model, vicuna, "own template", {}), ["hi"])["input_ids"][0].tolist()
    assert ids == [vicuna.bos_token_id, words.index("hi")]


def test_unknown_and_unlisted_models(tmp_path):
    with pytest.raises(ModelLoadError, match="not-a-model"):
        load_model(str(tmp_path / "not-a-model"))
    with pytest.raises(ModelLoadError, match="allowlist"):
        load_catalog_model("someone/some-model")
