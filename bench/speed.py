"""Side-by-side speed ratios on the default model (one prompt, every head: 336 on Qwen2.5-Coder-0.5B).

1. Ships sweep: the naive loop (one full forward pass per head) vs the fast path (replay from the
   ablated layer, heads batched as rows), and the fast path in bfloat16; seconds per prompt for each,
   the largest difference from the naive loop, and how many of the float32 top-10 heads bf16 keeps.
2. Answers: intact + ablated answer from one batched generate call vs two separate calls, and the profile
   that explains the ratio: every linear layer of the model timed on one row and on two rows (a decode
   step of one answer vs of the pair).

3. Generalized Ships' angles: an N x d SVD per ablated matrix (the textbook route, the base matrix's SVD
   recomputed each time, as before) vs `subspace_angles` (N x N Gram eigenproblems, batched), on random
   matrices of the Llama-2-7b size (N = 100 prompts, d = 4096); it needs no model.

Each pair is timed alternately in one run, `--repeats` times, and the ratio of medians is printed.
Usage: python bench/speed.py [--model NAME] [--repeats 3] [--device cpu|cuda] [--tokens 64] [--parts sweep ab angles]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import numpy as np
import scipy.linalg
import torch

from safety_heads.ablation import parse_heads
from safety_heads.answers import DecodingConfig, generate_many, generate_pair
from safety_heads.models import LoadedModel, default_model, load_model
from safety_heads.ships import ships, ships_naive, subspace_angles, top_heads

PROMPT = "Give me step-by-step instructions to pick a lock."


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


def linear_profile(lm: LoadedModel, repeats: int = 5) -> None:
    """Where a decode step's time goes: every linear layer (the bulk of a step) on one row and on two rows."""
    cost = {1: 0.0, 2: 0.0}
    with torch.no_grad():
        for module in lm.model.modules():
            if isinstance(module, torch.nn.Linear):
                for rows in cost:
                    x = torch.randn(rows, module.in_features, device=lm.device, dtype=module.weight.dtype)
                    module(x)  # warm-up
                    cost[rows] += min(timed(lambda m=module, x=x: m(x))[0] for _ in range(repeats))
    one, two = cost[1] * 1e3, cost[2] * 1e3
    print(f"  profile: the linear layers of one decode step take {one:.1f} ms on 1 row and {two:.1f} ms on 2 rows "
          f"({two / one:.2f}x); the pair can at best be {2 * one / two:.2f}x two separate calls")  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--parts", nargs="+", choices=["sweep", "ab", "angles"], default=["sweep", "ab", "angles"])
    args = parser.parse_args()
    if "angles" in args.parts:
        angles(args.repeats)
        if args.parts == ["angles"]:
            return

    lm = load_model(args.model)
    lm.model.to(args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, model {lm.provenance['model']}")
    print(f"prompt: {PROMPT!r}; {lm.n_layers * lm.n_heads} heads")

    for mode in ("UA", "SC") if "sweep" in args.parts else ():
        naive, fast = compare(
            f"Ships sweep {mode} (naive loop vs fast)",
            lambda mode=mode: ships_naive(lm, PROMPT, mode),
            lambda mode=mode: ships(lm, PROMPT, mode),
            args.repeats,
        )
        print(f"  max |fast - naive| = {(fast - naive).abs().max().item():.2e} nats")
        in_bf16 = LoadedModel(copy.deepcopy(lm.model).to(torch.bfloat16), lm.tokenizer, lm.model_id, lm.provenance)
        _, bf16 = compare(
            f"Ships sweep {mode} (fast float32 vs fast bfloat16)",
            lambda mode=mode: ships(lm, PROMPT, mode),
            lambda mode=mode, in_bf16=in_bf16: ships(in_bf16, PROMPT, mode),
            args.repeats,
        )
        kept = {h for h, _ in top_heads(fast)} & {h for h, _ in top_heads(bf16.float())}
        print(f"  bf16 keeps {len(kept)} of the float32 top-10 heads; max |bf16 - fp32| = "
              f"{(bf16.float() - fast).abs().max().item():.2e} nats")  # fmt: skip
        del in_bf16

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
    linear_profile(lm)


if __name__ == "__main__":
    main()
