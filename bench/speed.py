"""Side-by-side speed ratios on the embedded model (one prompt, all 270 heads).

1. Ships sweep: the naive loop (one full forward pass per head) vs the fast path (replay from the
   ablated layer, heads batched as rows). Also checks that both agree.
2. Answers: intact + ablated answer from one batched generate call vs two separate calls.

Each pair is timed alternately in one run, `--repeats` times, and the ratio of medians is printed.
Usage: python bench/speed.py [--repeats 3] [--device cpu|cuda] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from safety_heads.ablation import parse_heads
from safety_heads.answers import DecodingConfig, generate_many, generate_pair
from safety_heads.models import load_model
from safety_heads.ships import ships, ships_naive

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    args = parser.parse_args()

    lm = load_model()
    lm.model.to(args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, model {lm.provenance['model']}")
    print(f"prompt: {PROMPT!r}; {lm.n_layers * lm.n_heads} heads")

    for mode in ("UA", "SC"):
        naive, fast = compare(
            f"Ships sweep {mode} (naive loop vs fast)",
            lambda mode=mode: ships_naive(lm, PROMPT, mode),
            lambda mode=mode: ships(lm, PROMPT, mode),
            args.repeats,
        )
        print(f"  max |fast - naive| = {(fast - naive).abs().max().item():.2e} nats")

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
