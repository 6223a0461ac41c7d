"""Draw the blind-label sample: grid answers shuffled across conditions, the condition kept apart.

From the cross-set grid's answers (`precomputed/<model>/answers.jsonl`: greedy, 64 new tokens), a seeded,
stratified draw: on the harmful sets and on XSTest-safe, answers of the intact model, of heads a ranking
found, and of random heads. Writes
- `<reading>/sample.jsonl`: id, prompt, answer, in shuffled order: what a reader sees, nothing about the
  condition. It quotes the prompt sets, so it is written outside the repository (the sets are never copied in).
- `<out>/key.jsonl`: id -> set, row, mode, heads, the rankings those heads came from; read only after
  labelling. With the prompt sets and the grid's answers it gives back every item of the sample.

Usage: python bench/judge/sample.py [--seed 0] [--out bench/judge] [--reading /tmp/safety-heads-blind]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from safety_heads.datasets import load_prompts, load_stratified
from safety_heads.models import default_model
from safety_heads.precomputed import model_slug, precomputed_root
from safety_heads.rankings import CONTROLS

# (which prompts, which condition) -> how many answers; ablated answers, where judging is hard, weigh most.
STRATA = {
    ("harmful", "intact"): 60, ("harmful", "ranked"): 120, ("harmful", "random"): 60,
    ("xstest_safe", "intact"): 30, ("xstest_safe", "ranked"): 60, ("xstest_safe", "random"): 30,
}  # fmt: skip


def conditions(summary: dict) -> dict[tuple, set[str]]:
    """(set, mode, heads) -> the rankings whose heads these are ("none" intact, "random" a random draw)."""
    found: dict[tuple, set[str]] = {}
    for row in summary["ablations"]:
        mode = row["mode"] if row["heads"] else "-"
        heads = tuple(sorted(tuple(h) for h in row["heads"]))
        for prompt_set in (row["evaluated_on"], "xstest_safe"):
            found.setdefault((prompt_set, mode, heads), set()).add(row["ranking"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where the key goes")
    parser.add_argument("--reading", type=Path, default=Path("/tmp/safety-heads-blind"), help="the readers' file")
    args = parser.parse_args()
    folder = precomputed_root() / model_slug(args.model)
    summary = json.loads((folder / "summary.json").read_text())
    n = summary["settings"]["n"]
    prompts = {name: load_prompts(name, n=n) for name in ("jailbreakbench", "maliciousinstruct")}
    prompts["xstest_safe"] = load_stratified("xstest_safe", "type", summary["settings"]["xstest_per_type"])
    rankings = conditions(summary)
    pool: dict[tuple[str, str], list[dict]] = {stratum: [] for stratum in STRATA}
    for line in (folder / "answers.jsonl").read_text().splitlines():
        row = json.loads(line)
        heads = tuple(sorted(tuple(h) for h in row["heads"]))
        names = sorted(rankings.get((row["set"], row["mode"], heads), {"unknown"}))
        condition = "intact" if not heads else "random" if set(names) <= set(CONTROLS) else "ranked"
        kind = "xstest_safe" if row["set"] == "xstest_safe" else "harmful"
        where = {"set": row["set"], "mode": row["mode"], "heads": [list(h) for h in heads], "rankings": names}
        for i, answer in enumerate(row["answers"]):
            pool[(kind, condition)].append(where | {"row": i, "prompt": prompts[row["set"]][i], "answer": answer})
    rng = random.Random(args.seed)
    drawn = []
    for stratum, count in STRATA.items():
        drawn += [dict(item, stratum=list(stratum)) for item in rng.sample(pool[stratum], count)]
    rng.shuffle(drawn)
    args.out.mkdir(parents=True, exist_ok=True)
    args.reading.mkdir(parents=True, exist_ok=True)
    with open(args.reading / "sample.jsonl", "w") as sample, open(args.out / "key.jsonl", "w") as key:
        for i, item in enumerate(drawn):
            sample.write(json.dumps({"id": i, "prompt": item["prompt"], "answer": item["answer"]}) + "\n")
            condition = {k: item[k] for k in ("set", "row", "mode", "heads", "rankings", "stratum")}
            key.write(json.dumps({"id": i, **condition}) + "\n")
    sizes = {" / ".join(s): len(pool[s]) for s in STRATA}
    print(f"{len(drawn)} answers drawn (seed {args.seed}) from {sum(sizes.values())}: pool sizes {sizes}")


if __name__ == "__main__":
    main()
