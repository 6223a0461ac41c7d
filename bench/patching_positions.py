"""Where to patch a head: at the prompt's closing tokens ("last", the registry's `patching`) or at every
position ("all")? Attribution patching gives both cheaply (one backward pass per prompt), on the prompts the
precomputed files used (each set's first 32 refused prompts, 16 benign ones); printed per set: the top 10
under each, their overlap and the rank correlation of the two score matrices. Which heads actually stop the
refusal is for the grid to say (`precompute --reuse --evaluate`).

Usage: python bench/patching_positions.py [--out bench/results/patching_positions.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scipy.stats import spearmanr

from safety_heads.ablation import format_head
from safety_heads.behaviour import refused_rows
from safety_heads.datasets import load_prompts
from safety_heads.models import default_model, load_model
from safety_heads.patching import attribution_patching_scores
from safety_heads.ships import top_heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--out", type=Path, default=Path("bench/results/patching_positions.json"))
    args = parser.parse_args()
    lm = load_model(args.model, runtime="float32")  # a gradient needs the float32 weights in any case
    harmless = load_prompts("alpaca_seed_tasks", n=16)
    report: dict = {"model": lm.model_id, "runtime": "float32", "harmful_prompts": 32, "benign_prompts": 16}
    for name in ("jailbreakbench", "maliciousinstruct"):
        prompts = load_prompts(name)
        harmful = [prompts[i] for i in refused_rows(lm.model_id, name)[:32]]
        found, seconds = {}, {}
        for positions in ("last", "all"):
            start = time.perf_counter()
            found[positions] = attribution_patching_scores(lm, harmful, harmless, positions)
            seconds[positions] = round(time.perf_counter() - start, 1)
        tops = {p: [format_head(h) for h, _ in top_heads(m, 10)] for p, m in found.items()}
        report[name] = {
            "top10": tops,
            "top10_overlap": len(set(tops["last"]) & set(tops["all"])),
            "spearman": round(float(spearmanr(found["last"].flatten(), found["all"].flatten()).statistic), 3),
            "seconds": seconds,
        }
        print(name, json.dumps(report[name]), flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
