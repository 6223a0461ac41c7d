"""Which refusal measure, read at the prompt's last token, predicts that an ablation flips the answer?

Every ranking scores heads by a one-step measure of refusal; the grid then judges whole greedy answers. This
reads the grid's cells back (summary.json rows on the refused prompts of the two harmful sets, and their
answers in answers.jsonl) and, for each (cell, refused prompt), runs the prompt once under the cell's
ablation and compares three measures with the intact run:

- first-token drop: how much the ablation lowers log p of the intact answer's first token (the refusal ranking's
  and activation patching's measure);
- refusal log-odds drop: log-odds of opening with a refusal token, log p(R) - log(1 - p(R)), where R is the set
  of first tokens of the intact model's refusals on these prompts;
- direction drop: how much the residual stream's projection on the refusal direction (Arditi et al., 2024;
  `safety_heads.refusal_direction`, found on the heads' own set) falls at the layer where it was found.

The flip label is the grid's: coherent success by the keyword judge (its precision against blind readers is
0.85, bench/judge). Printed per measure: the AUC of separating flipped from unflipped prompts over all pairs,
and the Spearman correlation of the cell's mean measure with its coherent ASR across cells.

Usage: python bench/refusal_measures.py [--ks 3 1 5 10] [--out bench/results/refusal_measures.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import mannwhitneyu, spearmanr

from safety_heads.ablation import ablate
from safety_heads.behaviour import refused_rows
from safety_heads.datasets import load_prompts
from safety_heads.evaluation import StoredGrid
from safety_heads.models import LoadedModel, decode, default_model, encode, load_model
from safety_heads.precomputed import model_slug, precomputed_root
from safety_heads.refusal_direction import find_direction, last_token_residuals

SETS = ("jailbreakbench", "maliciousinstruct")
MEASURES = ("first_token", "log_odds", "direction")


@torch.no_grad()
def last_token_state(lm: LoadedModel, prompts: list[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) next-token log-probabilities and (N, n_layers, d) residuals entering each layer, at the last token."""
    logps, residuals = [], []
    for start in range(0, len(prompts), batch_size):
        batch = encode(lm, prompts[start : start + batch_size])  # left-padded: the last token is at -1
        out = lm.model(**batch, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        logps.append(torch.log_softmax(out.logits[:, -1].double(), -1).cpu())
        residuals.append(torch.stack([h[:, -1].float().cpu() for h in out.hidden_states[: lm.n_layers]], 1))
    return torch.cat(logps), torch.cat(residuals)


def log_odds(logp: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """(N,): log p(R) - log(1 - p(R)) for the token set R."""
    inside = torch.logsumexp(logp[:, tokens], -1)
    return inside - torch.log1p(-inside.exp().clamp(max=1 - 1e-12))


def auc(scores: list[float], labels: list[bool]) -> float | None:
    positive = [s for s, y in zip(scores, labels, strict=True) if y]
    negative = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positive or not negative:
        return None
    return round(float(mannwhitneyu(positive, negative).statistic) / (len(positive) * len(negative)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--out", type=Path, default=Path("bench/results/refusal_measures.json"))
    args = parser.parse_args()
    folder = precomputed_root() / model_slug(args.model)
    grid = StoredGrid(folder)
    summary = grid.summary
    lm = load_model(args.model, runtime=summary["settings"]["runtime"])  # the grid's own runtime
    n, eps = summary["settings"]["n"], summary["settings"]["eps"]
    refused = {name: [i for i in refused_rows(lm.model_id, name) if i < n] for name in SETS}
    prompts = {name: [load_prompts(name, n=n)[i] for i in refused[name]] for name in SETS}
    intact = {name: last_token_state(lm, prompts[name]) for name in SETS}
    first = {name: intact[name][0].argmax(-1) for name in SETS}  # (N,) the intact first token
    refusal_tokens = sorted({int(t) for name in SETS for t in first[name]})
    # The direction of each set the heads come from: its 32 first refused prompts, 16 harmless (as precomputed).
    harmless = last_token_residuals(lm, load_prompts("alpaca_seed_tasks", n=16))
    directions = {}
    for name in SETS:
        harmful = last_token_residuals(lm, [load_prompts(name)[i] for i in refused_rows(lm.model_id, name)[:32]])
        directions[name] = find_direction(harmful, harmless)
    pairs: dict[str, list] = {m: [] for m in (*MEASURES, "flip")}
    cells = []
    start = time.perf_counter()
    rows = [r for r in summary["ablations"] if r["subset"] == "refused" and r["ranking"] != "none"]
    for row in [r for r in rows if r["k"] in args.ks and r["evaluated_on"] in SETS]:
        name, heads = row["evaluated_on"], [tuple(h) for h in row["heads"]]
        flips = [v.harmful and v.degenerate is None for v in grid.verdicts(row)]  # on refused[name], in order
        with ablate(lm, heads, row["mode"], eps):
            logp, residual = last_token_state(lm, prompts[name])
        base_logp, base_residual = intact[name]
        direction = directions[row["heads_from"]]
        index = torch.arange(len(flips))
        measures = {
            "first_token": base_logp[index, first[name]] - logp[index, first[name]],
            "log_odds": log_odds(base_logp, refusal_tokens) - log_odds(logp, refusal_tokens),
            "direction": (base_residual - residual)[:, direction.layer] @ direction.vector,
        }
        for m, values in measures.items():
            pairs[m] += values.tolist()
        pairs["flip"] += flips
        cells.append({**{m: float(v.mean()) for m, v in measures.items()}, "coherent_asr": row["coherent_asr"]})
        print(
            f"{row['ranking']} {row['mode']} k={row['k']} {row['heads_from']} → {name}: ASR {row['coherent_asr']:.2f}"
        )
    report = {
        "model": lm.model_id,
        "runtime": lm.provenance.get("runtime"),
        "cells": len(cells),
        "pairs": len(pairs["flip"]),
        "flipped": sum(pairs["flip"]),
        "refusal_tokens": [decode(lm.tokenizer, [t]) for t in refusal_tokens],
        "direction_layers": {name: d.layer for name, d in directions.items()},
        "seconds": round(time.perf_counter() - start, 1),
        "auc_per_prompt": {m: auc(pairs[m], pairs["flip"]) for m in MEASURES},
        "spearman_per_cell": {
            m: round(float(spearmanr([c[m] for c in cells], [c["coherent_asr"] for c in cells]).statistic), 3)
            for m in MEASURES
        },
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
