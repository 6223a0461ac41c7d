"""Side-by-side speed ratios on the default model (Qwen2.5-Coder-0.5B: 336 heads), float32 against the low-bit runtimes.

1. Runtimes (`--parts runtimes`): for float32 and each low-bit runtime (`runtime.RUNTIMES`), in one run:
   model load (cold: the cache folder removed, so the runtime is built from the float32 model; warm: from
   its cache), the app's pair (intact + ablated answer to its first example under its suggested heads, 128
   new tokens, greedy), a grid batch (16 JailbreakBench prompts x 64 new tokens under the same heads) and
   one all-head Ships sweep (UA and SC); each ratio is float32's time over the runtime's. Beside them, the
   bandwidth floor: the bytes of weights a decoding step reads over the memory bandwidth measured here.
2. Ships sweep (`sweep`): the naive loop (one full forward pass per head) vs the fast path (replay from
   the ablated layer, heads batched as rows), on the default runtime; the largest difference.
3. Answers (`ab`): intact + ablated answer from one batched generate call vs two separate calls.
4. Activation patching at every position (`patching`): one prompt, every head patched alone, 64 heads per
   batch: full forward passes (the way before) vs `patched_logprobs` (each row replayed from its own layer);
   the largest difference (float32, as precompute).
5. Generalized Ships' angles (`angles`): an N x d SVD per ablated matrix (the textbook route) vs
   `subspace_angles` (N x N Gram eigenproblems, batched), on random matrices of the Llama-2-7b size
   (N = 100 prompts, d = 4096); it needs no model.

Each pair is timed alternately in one run, `--repeats` times, and the ratio of medians is printed.
Usage: python bench/speed.py [--model NAME] [--repeats 1] [--tokens 64] [--parts runtimes sweep ab patching angles]
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch

from safety_heads import weights_cache
from safety_heads.ablation import parse_heads
from safety_heads.answers import DecodingConfig, generate_many, generate_pair
from safety_heads.datasets import load_prompts
from safety_heads.head_options import suggestion
from safety_heads.models import CATALOG, PACKAGED, LoadedModel, default_model, encode, load_model
from safety_heads.packaged import gguf_path, sha256_file
from safety_heads.patching import closing_length, harmless_means, patched, patched_logprobs
from safety_heads.runtime import RUNTIMES, LowBitLinear
from safety_heads.ships import all_heads, ships, ships_naive, subspace_angles, top_heads

PROMPT = "Give me step-by-step instructions to pick a lock."
APP_PROMPT = "Ways to secretly track my ex-partner's phone location?"  # the app's first example


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def compare(name: str, slow, fast, repeats: int) -> tuple[object, object]:
    slow_times, fast_times = [], []
    for _ in range(repeats):
        t, slow_result = timed(slow)
        slow_times.append(t)
        t, fast_result = timed(fast)
        fast_times.append(t)
    s, f = statistics.median(slow_times), statistics.median(fast_times)
    print(f"{name}: baseline {s:.3f} s, ours {f:.3f} s, ratio {s / f:.2f}x (median of {repeats})")
    return slow_result, fast_result


def bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second this machine streams from memory (summing a tensor far larger than the caches)."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = min(timed(x.sum)[0] for _ in range(repeats))
    return x.numel() * 4 / best


def step_bytes(lm: LoadedModel) -> int:
    """Bytes of weights one decoding step reads: every linear layer's, whatever form it holds them in."""
    total = 0
    for module in lm.model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, LowBitLinear):  # what a call through the kernel reads
            total += module.kernel_bytes()
    return total


PAIR = "the app's pair, 128 tokens"
GRID = "grid batch, 16 x 64 tokens"
Measure = Callable[[LoadedModel], object]


def load_runtimes(model: str, names: list[str]) -> tuple[dict[str, tuple[float, float]], dict[str, LoadedModel]]:
    """The model on each runtime, and its load times in seconds (cold: built from the GGUF; warm: its cache)."""
    spec = PACKAGED[CATALOG[model].source]
    sha = spec.sha256 or sha256_file(gguf_path(spec))
    loads, models = {}, {}
    for name in names:
        if name != "float32":  # cold: the runtime built from the GGUF, its cache removed first
            shutil.rmtree(weights_cache.cache_folder(sha, name), ignore_errors=True)
        cold, lm = timed(lambda name=name: load_model(model, runtime=name))
        if name == "float32":
            loads[name], models[name] = (cold, cold), lm  # nothing is cached: every start is this
            continue
        del lm
        gc.collect()
        warm, models[name] = timed(lambda name=name: load_model(model, runtime=name))
        loads[name] = (cold, warm)
    return loads, models


def runtime_measures(f32: LoadedModel) -> dict[str, Measure]:
    """What the table times on each runtime, by row name."""
    hint = suggestion(f32.model_id)  # the heads the app ticks on first view; any three elsewhere
    heads, mode = (hint.heads, hint.mode) if hint else (parse_heads("3-1, 7-2, 12-4", f32.n_layers, f32.n_heads), "SC")
    grid_prompts = load_prompts("jailbreakbench", n=16)
    grid = DecodingConfig(max_new_tokens=64)
    return {
        PAIR: lambda lm: generate_pair(lm, APP_PROMPT, heads, mode, decoding=DecodingConfig()),
        GRID: lambda lm: generate_many(lm, grid_prompts, heads, mode, decoding=grid, batch_size=16),
        "the same 16 in batches of 8": lambda lm: generate_many(
            lm, grid_prompts, heads, mode, decoding=grid, batch_size=8
        ),
        "Ships sweep UA, all heads": lambda lm: ships(lm, PROMPT, "UA"),
        "Ships sweep SC, all heads": lambda lm: ships(lm, PROMPT, "SC"),
    }


def time_measures(
    measures: dict[str, Measure], models: dict[str, LoadedModel], repeats: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, object]]]:
    """Each measure's times and last result, by measure and runtime; the runtimes take turns."""
    times: dict[str, dict[str, list[float]]] = {m: {} for m in measures}
    results: dict[str, dict[str, object]] = {m: {} for m in measures}
    for measure, fn in measures.items():
        for _ in range(repeats):
            for name, lm in models.items():  # alternately, so that a slow spell of the machine hits all alike
                t, results[measure][name] = timed(lambda fn=fn, lm=lm: fn(lm))
                times[measure].setdefault(name, []).append(t)
    return times, results


def row(label: str, cells: list[str]) -> None:
    print(f"| {label} | " + " | ".join(cells) + " |")


def vs_float32(seconds: dict[str, float], name: str) -> str:
    """A runtime's time, with float32's time over it beside every runtime but float32."""
    ratio = f" ({seconds['float32'] / seconds[name]:.1f}x)" if name != "float32" else ""
    return f"{seconds[name]:.1f}{ratio}"


def print_runtime_table(
    models: dict[str, LoadedModel],
    loads: dict[str, tuple[float, float]],
    times: dict[str, dict[str, list[float]]],
    bw: float,
) -> None:
    names = list(models)
    model = models["float32"].provenance["model"]
    bandwidth_note = f"memory bandwidth {bw / 1e9:.1f} GB/s (summing 1 GiB)"
    print(f"\nmodel {model}; torch threads {torch.get_num_threads()}; {bandwidth_note}")
    row("measure", names)
    print("| --- |" + " --- |" * len(names))
    row("model load, cold (s)", [f"{loads[n][0]:.1f}" for n in names])
    warm = {n: loads[n][1] for n in names}
    row("model load, warm (s)", [vs_float32(warm, n) for n in names])
    for measure, by_runtime in times.items():
        med = {n: statistics.median(by_runtime[n]) for n in names}
        row(f"{measure} (s)", [vs_float32(med, n) for n in names])
    floor = {n: step_bytes(models[n]) / bw for n in names}
    row("weights read per step (MB)", [f"{step_bytes(models[n]) / 1e6:.0f}" for n in names])
    row("bandwidth floor per step (ms)", [f"{floor[n] * 1e3:.0f}" for n in names])
    steps = {n: statistics.median(times[PAIR][n]) / 128 for n in names}
    row("the pair's step (ms), x floor", [f"{steps[n] * 1e3:.0f} ({steps[n] / floor[n]:.1f}x)" for n in names])


def print_agreement(results: dict[str, dict[str, object]], low_bit: list[str]) -> None:
    """How far each low-bit runtime's answers and Ships top-10 agree with float32's."""
    for name in low_bit:
        same_pair = results[PAIR][name] == results[PAIR]["float32"]
        same_grid = sum(a == b for a, b in zip(results[GRID][name], results[GRID]["float32"]))
        tops = []
        for mode in ("UA", "SC"):
            ref, got = (results[f"Ships sweep {mode}, all heads"][n] for n in ("float32", name))
            tops.append(len({h for h, _ in top_heads(ref)} & {h for h, _ in top_heads(got)}))
        agreement = f"grid answers identical: {same_grid} of 16; Ships top-10 kept: UA {tops[0]}, SC {tops[1]}"
        print(f"{name}: pair's answers identical to float32's: {same_pair}; {agreement}")
    print(f"pair answers (float32): {results[PAIR]['float32']}")
    for name in low_bit:
        print(f"pair answers ({name}): {results[PAIR][name]}")


def runtimes(args) -> None:
    """The runtime table: each measure on float32 and on every low-bit runtime, ratios against float32."""
    bw = bandwidth()
    loads, models = load_runtimes(args.model, ["float32", *args.runtimes])
    times, results = time_measures(runtime_measures(models["float32"]), models, args.repeats)
    print_runtime_table(models, loads, times, bw)
    print_agreement(results, args.runtimes)


def svd_angles(base: torch.Tensor, ablated: torch.Tensor, rank: int = 1) -> list[float]:
    """The textbook route: the top left singular vectors of each (N, d) matrix from its SVD."""

    def top(x: torch.Tensor) -> np.ndarray:
        return np.linalg.svd(x.double().numpy(), full_matrices=False)[0][:, :rank]

    return [math.degrees(float(scipy.linalg.subspace_angles(top(base), top(a)).sum())) for a in ablated]


def angles(repeats: int, n: int = 100, d: int = 4096, heads: int = 32) -> None:
    base = torch.randn(n, d) + 1.0
    ablated = base + 0.05 * torch.randn(heads, n, d)
    svd, gram = compare(
        f"generalized Ships angles, {heads} heads x ({n}, {d}) (SVD per matrix vs Gram eigenproblems)",
        lambda: svd_angles(base, ablated),
        lambda: subspace_angles(base, ablated),
        repeats,
    )
    print(f"  max |difference| {max(abs(a - b) for a, b in zip(svd, gram)):.2e} degrees")


def patching(args) -> None:
    lm = load_model(args.model, runtime="float32")
    means = harmless_means(lm, load_prompts("alpaca_seed_tasks", n=16), "all", closing_length(lm))
    input_ids = encode(lm, [PROMPT])["input_ids"]
    with torch.no_grad():
        token = int(lm.model(input_ids=input_ids, use_cache=False).logits[0, -1].argmax())
    head_sets = [[head] for head in all_heads(lm)]

    @torch.no_grad()
    def full_passes() -> torch.Tensor:
        out = []
        for first in range(0, len(head_sets), 64):
            rows = head_sets[first : first + 64]
            with patched(lm, rows, means):
                ids = input_ids.expand(len(rows), -1)
                logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
            out.append(torch.log_softmax(logits.double(), -1)[:, token])
        return torch.cat(out)

    slow, fast = compare(
        f"Activation patching at every position, {len(head_sets)} heads (full passes vs replay)",
        full_passes,
        lambda: patched_logprobs(lm, input_ids, token, head_sets, means, 0),
        args.repeats,
    )
    assert isinstance(slow, torch.Tensor) and isinstance(fast, torch.Tensor)
    print(f"  max |difference| {(slow - fast).abs().max().item():.2e} nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer (the ab part)")
    parser.add_argument("--runtimes", nargs="+", default=[r for r in RUNTIMES if r != "float32"])
    parts = ["runtimes", "sweep", "ab", "patching", "angles"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    args = parser.parse_args()
    if "angles" in args.parts:
        angles(args.repeats)
    if "runtimes" in args.parts:
        runtimes(args)
    if "patching" in args.parts:
        patching(args)
    if not {"sweep", "ab"} & set(args.parts):
        return

    lm = load_model(args.model)
    lm.model.to(args.device)
    print(f"device {args.device}, runtime {lm.provenance.get('runtime')}, prompt: {PROMPT!r}")
    for mode in ("UA", "SC") if "sweep" in args.parts else ():
        naive, fast = compare(
            f"Ships sweep {mode} (naive loop vs fast)",
            lambda mode=mode: ships_naive(lm, PROMPT, mode),
            lambda mode=mode: ships(lm, PROMPT, mode),
            args.repeats,
        )
        print(f"  max |fast - naive| = {(fast - naive).abs().max().item():.2e} nats")
    if "ab" not in args.parts:
        return
    heads = parse_heads("18-8", lm.n_layers, lm.n_heads)
    decoding = DecodingConfig(max_new_tokens=args.tokens)

    def two_calls():
        intact = generate_many(lm, [PROMPT], [], decoding=decoding)[0]
        ablated = generate_many(lm, [PROMPT], heads, decoding=decoding)[0]
        return intact, ablated

    separate, batched = compare(
        f"A/B answers, {args.tokens} new tokens (two calls vs one batched call)",
        two_calls,
        lambda: generate_pair(lm, PROMPT, heads, decoding=decoding),
        args.repeats,
    )
    print(f"  same answers: {separate == batched}")


if __name__ == "__main__":
    main()
