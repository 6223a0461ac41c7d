"""Which differences between methods in the grid are more than chance: every method's attempt rate against the
refusal ranking's on the same refused prompts (same mode, k and direction), by McNemar's exact test.

Reads the stored grid (summary.json and answers.jsonl, judged again prompt by prompt; nothing is generated),
so it runs in seconds. Each cell gets its 95 % Wilson interval; random draws are pooled into one interval.
The p-values are Holm-adjusted over every comparison printed, the family a reader scans.

Usage: python bench/paired_tests.py [--model NAME] [--out bench/results/paired_tests.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safety_heads.evaluation import StoredGrid
from safety_heads.models import default_model
from safety_heads.precomputed import model_slug, precomputed_root
from safety_heads.provenance import write_json
from safety_heads.rankings import CONTROLS
from safety_heads.significance import holm, paired, wilson

REFERENCE = "refusal"


def cells(grid: StoredGrid) -> dict[tuple, dict[str, list[dict]]]:
    """The refused-subset rows, by (mode, k, heads from, evaluated on), then by ranking (draws kept together)."""
    found: dict[tuple, dict[str, list[dict]]] = {}
    for row in grid.summary["ablations"]:
        if row.get("subset") == "refused" and row["ranking"] != "none":
            where = (row["mode"], row["k"], row["heads_from"], row["evaluated_on"])
            found.setdefault(where, {}).setdefault(row["ranking"], []).append(row)
    return found


def compare(grid: StoredGrid) -> list[dict]:
    results = []
    for (mode, k, heads_from, evaluated_on), rankings in sorted(cells(grid).items()):
        reference = grid.attempts(rankings[REFERENCE][0]) if REFERENCE in rankings else None
        for ranking, rows in sorted(rankings.items()):
            pooled = [a for row in rows for a in grid.attempts(row)]
            entry = {
                "mode": mode, "k": k, "heads_from": heads_from, "evaluated_on": evaluated_on, "ranking": ranking,
                "heads": None if ranking in CONTROLS else rows[0]["heads"], "n": len(pooled),
                "attempt_rate": sum(pooled) / len(pooled), "ci95": wilson(sum(pooled), len(pooled)),
            }  # fmt: skip
            if reference is not None and ranking != REFERENCE and ranking not in CONTROLS:
                entry["only_this"], entry["only_refusal"], entry["p"] = paired(grid.attempts(rows[0]), reference)
            results.append(entry)
    tested = [r for r in results if "p" in r]
    for entry, adjusted in zip(tested, holm([r["p"] for r in tested]), strict=True):
        entry["p_holm"] = adjusted
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| mode | k | heads from → on | ranking | attempts [95 % CI] (N) | vs refusal: only this / only refusal | p | "
        "p (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        low, high = r["ci95"]
        versus = f"{r['only_this']} / {r['only_refusal']} | {r['p']:.3f} | {r['p_holm']:.3f}" if "p" in r else "| |"
        lines.append(
            f"| {r['mode']} | {r['k']} | {r['heads_from']} → {r['evaluated_on']} | {r['ranking']} | "
            f"{r['attempt_rate']:.2f} [{low:.2f}, {high:.2f}] ({r['n']}) | {versus} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--out", type=Path, default=Path("bench/results/paired_tests.json"))
    args = parser.parse_args()
    results = compare(StoredGrid(precomputed_root() / model_slug(args.model)))
    print(markdown(results))
    write_json(args.out, {"model": args.model, "measure": "attempt rate (judge.attempts)", "cells": results})


if __name__ == "__main__":
    main()
