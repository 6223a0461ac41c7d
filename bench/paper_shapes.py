"""The paper's models at their real size on a GPU: Llama-2-7b-chat and Vicuna-7b-v1.5 shapes, end to end.

Model hubs are unreachable from our machines, so each model is built from its published config (Llama-2-7b:
32 layers x 32 heads, hidden 4096, intermediate 11008, RMSNorm, RoPE, a vocabulary of 32,000) with random
weights, saved once in the hub's layout and loaded through the normal hub path, `load_model(folder,
quantize="4bit")`: bitsandbytes nf4, bf16 compute. Its tokenizer is of Llama's kind (byte-fallback BPE over
"▁"-marked words, 32,000 ids, trained here on Python sources) with Llama-2-chat's [INST] format as its chat
template; a copy named for Vicuna has no template, so the library's Vicuna (FastChat v1.1) format applies.
The weights are random, so every answer is noise: what is measured is the cost and the correctness of the
machinery at the paper's size.

Parts, in this order (default: all):
  sweep       Ships on one prompt, every head (1,024), both modes: the naive loop vs the fast sweep
  ab          the intact + ablated answers from one batched generate vs two calls, 128 new tokens
  vicuna      the Vicuna copy: its prompt format and an answer pair
  app         the app serving this model: /compare time to first token and total, the heatmap endpoints,
              and a concurrent load run whose answers must equal the same requests sent alone
  precompute  `python -m safety_heads precompute` over N prompts of one set, both modes, generalized Ships,
              Sahara and our refusal group: wall time, peak memory, and the two-set grid projected from it
  scale       the fast sweep on the SmolLM2-135M, Llama-2-7b and Llama-2-13b shapes

Usage: python bench/paper_shapes.py [--parts ...] [--work /tmp/paper-shapes] [-n 100] [--set jailbreakbench]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from speed import PROMPT, compare, timed
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from safety_heads.ablation import MODES, ablate, count_hooks
from safety_heads.answers import DecodingConfig, generate_many, generate_pair
from safety_heads.models import LoadedModel, encode, format_prompt, load_model
from safety_heads.ships import ships, ships_naive, top_heads

VOCAB = 32_000
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def llama_shape(hidden: int, mlp: int, layers: int, heads: int, kv_heads: int, **extra) -> dict:
    """A Llama config's shape fields, and any extra field."""
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return dict(zip(names, (hidden, mlp, layers, heads, kv_heads)), **extra)


# Hidden size, MLP size, layers, query heads, key/value heads.
SHAPES = {
    "smollm2-135m": llama_shape(576,  1536,  30, 9,  3, tie_word_embeddings=True),
    "llama-2-7b":   llama_shape(4096, 11008, 32, 32, 32),
    "llama-2-13b":  llama_shape(5120, 13824, 40, 40, 40),
}  # fmt: skip
# Llama-2-chat's prompt format (a system block inside the first [INST], as Meta's model card describes it).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def some_heads(n_layers: int) -> list[tuple[int, int]]:
    """Three heads to ablate in the answer benchmarks (any do on random weights): early, middle, last layer."""
    return [(n_layers // 3, 4), (2 * n_layers // 3, 7), (n_layers - 1, 0)]


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def llama_kind_tokenizer(corpus_bytes: int = 16 << 20) -> PreTrainedTokenizerFast:
    """A tokenizer laid out like Llama's (<unk> <s> </s>, the 256 byte-fallback pieces, then learned BPE pieces),
    with Llama-2-chat's template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text, size = [], 0
    for path in sorted(Path(torch.__file__).parent.rglob("*.py")):
        text.append(path.read_text(encoding="utf-8", errors="ignore"))
        size += len(text[-1])
        if size >= corpus_bytes:
            break
    specials = ["<unk>", "<s>", "</s>"]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(byte_pieces), special_tokens=specials, show_progress=False)
    learner.train_from_iterator(text, trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {piece: i for i, piece in enumerate(specials + byte_pieces)}
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    assert len(vocab) <= VOCAB, len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Fuse(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    return tokenizer


def build_checkpoint(folder: Path, shape: str, tokenizer: PreTrainedTokenizerFast) -> Path:
    """Random weights in the published shape, saved in the hub's layout (once per machine)."""
    if (folder / "config.json").is_file():
        return folder
    config = LlamaConfig(**COMMON, **SHAPES[shape])
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    release()
    tokenizer.save_pretrained(folder)
    seconds = time.perf_counter() - start
    print(f"built {folder.name}: {n_params / 1e9:.2f} B parameters, random, bf16, saved in {seconds:.0f} s")
    return folder


def vicuna_copy(llama: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    """The same weights behind a tokenizer with no chat template, in a folder named for Vicuna."""
    folder = llama.parent / "vicuna-7b-v1.5-shape"
    folder.mkdir(exist_ok=True)
    for file in llama.iterdir():
        if file.name.startswith(("model", "config", "generation_config")) and not (folder / file.name).exists():
            (folder / file.name).symlink_to(file)
    tokenizer = copy.copy(tokenizer)  # the Llama checkpoints keep their template
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    return folder


def load_4bit(folder: Path) -> LoadedModel:
    import bitsandbytes as bnb

    peak_reset()
    seconds, lm = timed(lambda: load_model(str(folder), quantize="4bit"))
    q_proj = lm.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_type == "nf4", type(q_proj)
    print(
        f"loaded {folder.name} through load_model(quantize='4bit') in {seconds:.0f} s: {lm.n_layers} layers x "
        f"{lm.n_heads} heads ({lm.n_kv_heads} key/value), q_proj {type(q_proj).__name__} nf4, compute "
        f"{q_proj.compute_dtype}, {gib(peak())} on the GPU, bitsandbytes {bnb.__version__}"
    )
    return lm


def part_sweep(lm: LoadedModel) -> None:
    n_heads = lm.n_layers * lm.n_heads
    ids = encode(lm, [PROMPT])["input_ids"]
    T = ids.shape[1]
    uniform = (torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]).to(lm.device)
    layer, head = some_heads(lm.n_layers)[0]
    with ablate(lm, [(layer, head)], "UA"):
        attention = lm.model(input_ids=ids, output_attentions=True).attentions[layer][0, head].float()
    print(
        f"UA on the 4-bit model, head {layer}-{head}: max |attention - uniform| = "
        f"{(attention - uniform).abs().max().item():.2e}"
    )
    for mode in MODES:
        ships(lm, PROMPT, mode)  # warm-up: kernel start-up stays out of the timings
        peak_reset()
        t_fast, fast = timed(lambda mode=mode: ships(lm, PROMPT, mode))
        fast_peak = peak()
        peak_reset()
        t_naive, naive = timed(lambda mode=mode: ships_naive(lm, PROMPT, mode))
        naive_peak = peak()
        same = len({h for h, _ in top_heads(fast)} & {h for h, _ in top_heads(naive)})
        diff = (fast - naive).abs().max().item()
        print(
            f"Ships sweep {mode}, all {n_heads:,} heads, one prompt of {T} tokens: naive loop {t_naive:.1f} s, "
            f"fast {t_fast:.2f} s, ratio {t_naive / t_fast:.1f}x; max |fast - naive| {diff:.2e} nats; "
            f"top-10 shared {same}/10; peak GPU memory fast {gib(fast_peak)}, naive {gib(naive_peak)}"
        )
    for batch_size in (64, 256):
        t, _ = timed(lambda b=batch_size: ships(lm, PROMPT, "UA", batch_size=b))
        print(f"  fast sweep UA with {batch_size} ablations per batch: {t:.2f} s")
    assert count_hooks(lm) == 0


def part_ab(lm: LoadedModel, tokens: int = 128, repeats: int = 3) -> None:
    decoding = DecodingConfig(max_new_tokens=tokens)
    heads = some_heads(lm.n_layers)

    def two_calls():
        intact = generate_many(lm, [PROMPT], [], decoding=decoding)[0]
        return intact, generate_many(lm, [PROMPT], heads, decoding=decoding)[0]

    generate_pair(lm, PROMPT, heads, decoding=DecodingConfig(max_new_tokens=4))  # warm-up
    separate, batched = compare(
        f"A/B answers, {tokens} new tokens (two calls vs one batched call)",
        two_calls,
        lambda: generate_pair(lm, PROMPT, heads, decoding=decoding),
        repeats,
    )
    lengths = [len(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in batched]
    # In bf16 a batch of two rows may round differently from one row, and random weights amplify that.
    print(f"  same answers: {separate == batched}; answer lengths ~{lengths} tokens, re-tokenized (noise)")


def part_vicuna(folder: Path) -> None:
    lm = load_4bit(folder)
    text = format_prompt(lm.tokenizer, PROMPT)
    ids = encode(lm, [PROMPT])["input_ids"][0].tolist()
    print(f"Vicuna format: {text!r}; first id {ids[0]} (BOS is {lm.tokenizer.bos_token_id})")
    assert text.startswith("A chat between") and text.endswith("ASSISTANT:") and ids[0] == lm.tokenizer.bos_token_id
    decoding = DecodingConfig(max_new_tokens=16)
    intact, ablated = generate_pair(lm, PROMPT, some_heads(lm.n_layers), "SC", decoding=decoding)
    print(f"  answer pair ran: {len(intact)} and {len(ablated)} characters (noise)")
    t, _ = timed(lambda: ships(lm, PROMPT, "UA"))
    print(f"  fast Ships sweep UA on the Vicuna copy: {t:.2f} s")


def release() -> None:
    """Give back the GPU memory of the models nothing refers to any more."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def part_app(folder: Path, clients: int = 4, requests: int = 32) -> None:
    """The app, in this process, serving the 4-bit model by its folder name, as on a GPU Space."""
    from gradio_client import Client
    from load import distinct_requests, run_load, served

    model = str(folder)
    os.environ.update(SAFETY_HEADS_EXTRA_MODELS=model, SAFETY_HEADS_APP_MODEL=model, GRADIO_ANALYTICS_ENABLED="False")
    import app  # starts loading the model at import

    lm = app.cache.get(model)
    typed = ", ".join(f"{layer}-{head}" for layer, head in some_heads(lm.n_layers))
    print(f"app: serving {model} on {lm.device}")
    with served(app) as url:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        first, total = [], []
        for prompt in ("How do I pick a lock?", "Write a poem about the sea.", "Explain how vaccines work."):
            start = time.perf_counter()
            job = client.submit(model, prompt, [], typed, "UA", 1e-5, "greedy", 128, 0, api_name="/compare")
            seen = None
            while not job.done():
                if seen is None and any(out[0] for out in job.outputs()):
                    seen = time.perf_counter() - start
                time.sleep(0.005)
            job.result()
            total.append(time.perf_counter() - start)
            first.append(seen if seen is not None else total[-1])
        print(
            f"/compare, 128 new tokens, 3 heads (3 prompts): first token {statistics.median(first):.2f} s, total "
            f"{statistics.median(total):.2f} s (medians; all {[round(t, 2) for t in total]})"
        )
        for api_name, args in (
            ("/attention", (model, PROMPT, typed.split(",")[0], "UA", 1e-5)),
            ("/score_prompt", (model, PROMPT, [], typed, "UA", 1e-5)),
            ("/head_options", (model, "jailbreakbench", "UA", None, [], "")),
        ):
            t, _ = timed(lambda a=api_name, x=args: client.predict(*x, api_name=a))
            print(f"{api_name} (heatmap): {t:.2f} s")
    distinct = distinct_requests(model, 16, prompts=["How do I pick a lock?", "What is the capital of France?"])
    report = run_load(app, lm, distinct, requests, clients)
    summary = report.summary().replace("\n", "\n  ")
    print(f"load run, {clients} clients, {requests} requests, 16 new tokens per answer:\n  {summary}")
    print(f"ablation hooks left on the model: {count_hooks(lm)}")


def part_precompute(folder: Path, prompt_set: str, n: int, out: Path, n_benign: int = 50) -> None:
    from safety_heads import cli
    from safety_heads.precomputed import path_for

    os.environ["SAFETY_HEADS_EXTRA_MODELS"] = str(folder)
    argv = ["precompute", "--model", str(folder), "--sets", prompt_set, "--modes", *MODES, "-n", str(n)]
    argv += ["--n-benign", str(n_benign), "--batch-size", "256", "--out", str(out)]
    print(f"python -m safety_heads {' '.join(argv)}  (batch 256: the sweep part measured it faster here)")
    peak_reset()
    seconds, code = timed(lambda: cli.main(argv))
    assert code == 0, code
    files = {mode: json.loads(path_for(str(folder), prompt_set, mode, out).read_text()) for mode in MODES}
    print(
        f"precompute, {n} prompts of {prompt_set} ({n_benign} benign), both modes, every ranking + Sahara (3) "
        f"+ refusal group (5): {seconds / 60:.1f} min in all (model load included), "
        f"peak GPU memory {gib(peak())}"
    )
    projected = seconds
    for mode, data in files.items():
        p = data["provenance"]
        per_set = p["seconds"] + p["groups"]["seconds"]
        projected += per_set  # a second set: its harmful sweep and group searches; the benign sweep is shared
        ships, sahara = [h[:2] for h in data["top10"]["ships"][:3]], [h[:2] for h in data["groups"]["sahara"]]
        print(
            f"  {mode}: benign sweep {p['benign_sweep_seconds']} s (shared by the sets), harmful prompts "
            f"{p['seconds']} s, group searches {p['groups']['seconds']} s; top-3 Ships {ships}, Sahara {sahara}"
        )
    print(f"  projection (not a measurement): both sets x both modes, {projected / 60:.1f} min on this GPU")


def part_scale(work: Path, tokenizer: PreTrainedTokenizerFast, shapes: list[str]) -> None:
    """Each shape loaded alone (so its peak memory is its own) and swept on one prompt (UA)."""
    rows = []
    for shape in shapes:
        rows.append(scale_row(build_checkpoint(work / shape, shape, tokenizer)))
        release()
    print(
        "| shape | heads | layers | fast sweep, s/prompt | naive loop, s/prompt (one head per layer, scaled) "
        "| ratio | peak GPU memory |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for shape, heads, layers, fast, naive, memory in rows:
        print(f"| {shape} | {heads:,} | {layers} | {fast:.2f} | {naive:.1f} | {naive / fast:.0f}x | {gib(memory)} |")


def scale_row(folder: Path) -> tuple:
    lm = load_4bit(folder)
    ships(lm, PROMPT, "UA")  # warm-up
    peak_reset()
    fast = statistics.median(timed(lambda: ships(lm, PROMPT, "UA"))[0] for _ in range(3))
    memory = peak()
    t_subset, _ = timed(lambda: [ships_naive_heads(lm, [(layer, 0)]) for layer in range(lm.n_layers)])
    return folder.name, lm.n_layers * lm.n_heads, lm.n_layers, fast, t_subset * lm.n_heads, memory


@torch.no_grad()
def ships_naive_heads(lm: LoadedModel, heads) -> None:
    """One step of the naive loop: a full forward pass with these heads ablated (UA)."""
    ids = encode(lm, [PROMPT])["input_ids"]
    with ablate(lm, heads, "UA"):
        lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)


def main() -> None:
    parts = ["sweep", "ab", "vicuna", "app", "precompute", "scale"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--work", type=Path, default=Path("/tmp/paper-shapes"), help="where the checkpoints go")
    parser.add_argument("--out", type=Path, default=Path("/tmp/paper-shapes/precomputed"))
    parser.add_argument("--set", default="jailbreakbench", help="the prompt set precompute runs on")
    parser.add_argument("-n", type=int, default=100, help="prompts precompute runs on")
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-2-7b", help="the model of every part but scale")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="for the scale part")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the app module, for the app part

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (a dry run)"
    print(f"{device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    start = time.perf_counter()
    tokenizer = llama_kind_tokenizer()
    print(f"tokenizer of Llama's kind: {len(tokenizer)} ids, trained in {time.perf_counter() - start:.0f} s")
    llama = build_checkpoint(args.work / f"{args.shape}-chat-shape", args.shape, tokenizer)
    lm = None
    if {"sweep", "ab"} & set(args.parts):
        lm = load_4bit(llama)
    if "sweep" in args.parts:
        part_sweep(lm)
    if "ab" in args.parts:
        part_ab(lm)
    del lm
    release()
    if "scale" in args.parts:
        part_scale(args.work, tokenizer, args.shapes)
    if "vicuna" in args.parts:
        part_vicuna(vicuna_copy(llama, tokenizer))
        release()
    if "precompute" in args.parts:
        part_precompute(llama, args.set, args.n, args.out)
    if "app" in args.parts:
        part_app(llama)


if __name__ == "__main__":
    main()
