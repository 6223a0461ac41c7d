"""The hub path on a CUDA machine: 4-bit nf4 loading with bitsandbytes, ablation on packed weights, and
the Ships speed ratio there.

Model hubs are unreachable from our machines, so the checkpoint is built from a config (Llama family,
grouped-query attention) and saved in the hub's layout; the tokenizer comes from a folder you pass.
Usage: python bench/cuda_check.py TOKENIZER_DIR
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from safety_heads.ablation import ablate, count_hooks
from safety_heads.answers import DecodingConfig, generate_pair
from safety_heads.models import LoadedModel, encode, load_model
from safety_heads.ships import ships, ships_naive

# SmolLM2-135M's shape: 30 layers, 9 query heads sharing 3 key/value heads.
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)  # fmt: skip
PROMPT = "Give me step-by-step instructions to pick a lock."


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main(tokenizer_dir: str) -> None:
    import bitsandbytes as bnb

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), **SMOLLM2_SHAPE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        lm = load_model(folder)  # quantize="auto": 4-bit nf4 because CUDA is there
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, bitsandbytes {bnb.__version__}")
    q_proj = lm.layers[0].self_attn.q_proj
    print(f"q_proj is {type(q_proj).__name__}, weight dtype {q_proj.weight.dtype}, quant {q_proj.weight.quant_type}")
    assert isinstance(q_proj, bnb.nn.Linear4bit)

    ids = encode(lm, [PROMPT])["input_ids"]
    T = ids.shape[1]
    uniform = (torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]).cuda()
    with ablate(lm, [(12, 4)], "UA"):
        att = lm.model(input_ids=ids, output_attentions=True).attentions[12][0, 4].float()
    print(f"UA on 4-bit 12-4: max |attention - uniform| = {(att - uniform).abs().max().item():.2e}")
    intact, ablated = generate_pair(lm, PROMPT, [(12, 4)], "SC", decoding=DecodingConfig(max_new_tokens=16))
    print(f"generate_pair ran (random weights, text is noise): {len(intact)} and {len(ablated)} chars")
    assert count_hooks(lm) == 0

    for name, model_lm in (("4-bit nf4, bf16 compute", lm), ("fp32", fp32_copy(model, tokenizer))):
        ships(model_lm, PROMPT, "UA")  # warm-up, so neither timing pays for kernel start-up
        t_naive, naive = timed(lambda m=model_lm: ships_naive(m, PROMPT, "UA"))
        t_fast, fast = timed(lambda m=model_lm: ships(m, PROMPT, "UA"))
        print(
            f"Ships sweep, 270 heads, {name}: naive {t_naive:.2f} s, fast {t_fast:.3f} s, "
            f"ratio {t_naive / t_fast:.1f}x, max |diff| {(fast - naive).abs().max().item():.2e}"
        )


def fp32_copy(model, tokenizer) -> LoadedModel:
    model = model.float().cuda().eval()
    model.config._attn_implementation = "eager"
    tokenizer.padding_side = "left"
    return LoadedModel(model, tokenizer, "fp32-random", {})


if __name__ == "__main__":
    main(sys.argv[1])
