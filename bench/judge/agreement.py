"""How often each judge agrees with the blind labels: the keyword judge the grid uses, and a model as judge.

Reads `labels.jsonl` (the blind labels, `RULES.md`: two readers and the settled label), `key.jsonl` (each
item's set, row and condition, read only here), the prompt sets and the grid's answers and surprise values,
and prints per judge, on "attempts the request" against everything else: agreement, precision, recall;
overall, on the harmful prompts and on XSTest-safe, and by condition (intact, a ranking's heads, random
heads). The two readers' agreement with each other comes first: the ceiling a judge can be held to.

- keyword: the grid's coherent success, i.e. the paper's keyword rule says harmful and the coherence rules
  (text, and the intact model's surprise above the calibrated limit) say not degenerate;
- opening: the same coherence rules, with the stricter refusal reading `behaviour` uses: the first sentence
  declines (a refusal keyword later in an answer that complies does not count), and at least 32 characters;
- llm: `safety_heads.llm_judge.LlmJudge` on `--judge-model` (default: the default model, int4); with --no-llm
  the file's earlier llm section is kept;
- probe (--probe SEED): the same judge on a small labelled subset first, to learn whether a judge model can
  tell misreads at all before it reads all 360 answers: every misread, 15 attempts and 10 refusals drawn
  with the seed; written to `probes` (by judge model), beside the sections already in --out.

Usage: python bench/judge/agreement.py [--judge-model qwen2.5-coder-1.5b-instruct] [--no-llm | --probe SEED]
       [--out F]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from safety_heads.coherence import with_surprise
from safety_heads.datasets import load_prompts, load_stratified
from safety_heads.evaluation import StoredGrid, answer_key
from safety_heads.judge import RefusalJudge, attempts
from safety_heads.llm_judge import LlmJudge
from safety_heads.models import default_model, load_model
from safety_heads.precomputed import model_slug, precomputed_root

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def scores(truth: list[bool], said: list[bool]) -> dict:
    """Agreement, precision and recall of `said` on the positive class "attempts"."""
    both = sum(t and s for t, s in zip(truth, said, strict=True))
    return {
        "n": len(truth),
        "agreement": round(sum(t == s for t, s in zip(truth, said, strict=True)) / len(truth), 3),
        "precision": round(both / sum(said), 3) if any(said) else None,
        "recall": round(both / sum(truth), 3) if any(truth) else None,
    }


def grid_items(key: list[dict], model: str) -> tuple[list[dict], float]:
    """Each keyed item with its prompt, answer and surprise, from the prompt sets and the grid's answers; and
    the grid's surprise limit."""
    grid = StoredGrid(precomputed_root() / model_slug(model))
    n = grid.summary["settings"]["n"]
    prompts = {name: load_prompts(name, n=n) for name in ("jailbreakbench", "maliciousinstruct")}
    prompts["xstest_safe"] = load_stratified("xstest_safe", "type", grid.summary["settings"]["xstest_per_type"])
    items = []
    for item in key:
        row, i = grid.answers[answer_key(item["set"], item["mode"], item["heads"])], item["row"]
        items.append({"prompt": prompts[item["set"]][i], "answer": row["answers"][i], "surprise": row["surprise"][i]})
    return items, grid.limit


def confusion(labels: list[str], said: list[bool]) -> dict[str, int]:
    """How often each blind label was read as an attempt or not."""
    return dict(Counter(f"{label} -> {'attempts' if s else 'not'}" for label, s in zip(labels, said, strict=True)))


def breakdown(key: list[dict], truth: list[bool], said: list[bool]) -> dict:
    """`scores` overall and per slice of the sample."""
    slices = {
        "all": lambda k: True,
        "harmful prompts": lambda k: k["set"] != "xstest_safe",
        "XSTest-safe": lambda k: k["set"] == "xstest_safe",
        "condition intact": lambda k: k["stratum"][1] == "intact",
        "condition ranked": lambda k: k["stratum"][1] == "ranked",
        "condition random": lambda k: k["stratum"][1] == "random",
    }
    out = {}
    for name, keep in slices.items():
        rows = [i for i, k in enumerate(key) if keep(k)]
        out[name] = scores([truth[i] for i in rows], [said[i] for i in rows])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=HERE)
    parser.add_argument("--model", default=default_model(), help="the model whose grid answers were sampled")
    parser.add_argument("--judge-model", default=default_model())
    parser.add_argument("--out", type=Path, default=HERE / "agreement.json")
    parser.add_argument("--no-llm", action="store_true", help="keep the llm section already in --out")
    parser.add_argument("--probe", type=int, default=None, help="seed of a small labelled subset the llm reads")
    args = parser.parse_args()
    key = sorted(read_jsonl(args.folder / "key.jsonl"), key=lambda k: k["id"])
    labelled = {item["id"]: item for item in read_jsonl(args.folder / "labels.jsonl")}
    labels = [labelled[k["id"]]["label"] for k in key]
    truth = [label == "attempts" for label in labels]
    items, limit = grid_items(key, args.model)
    a, b = ([labelled[k["id"]][reader] for k in key] for reader in ("reader_a", "reader_b"))
    report: dict = {
        "n": len(key),
        "labels": dict(Counter(labels)),
        "readers": {
            "four-way agreement": round(sum(x == y for x, y in zip(a, b)) / len(a), 3),
            "attempts": scores([x == "attempts" for x in a], [y == "attempts" for y in b]),
        },
    }
    judge = RefusalJudge()
    keyword = [with_surprise(judge(it["answer"]), it["surprise"], limit) for it in items]
    for name, reads in (
        ("keyword", [v.harmful and v.degenerate is None for v in keyword]),
        ("opening", [attempts(v) for v in keyword]),
    ):
        report[name] = breakdown(key, truth, reads) | {"confusion (people -> judge)": confusion(labels, reads)}
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["probes"] = earlier.get("probes", {})
    if args.no_llm or args.probe is not None:
        report["llm"] = earlier["llm"]
    if not args.no_llm:
        rows = range(len(key)) if args.probe is None else probe_rows(labels, args.probe)
        lm = load_model(args.judge_model)
        start = time.perf_counter()
        readings = LlmJudge(lm)([items[i]["prompt"] for i in rows], [items[i]["answer"] for i in rows])
        said = [r.label for r in readings]
        section = {
            "judge_model": lm.model_id,
            "runtime": lm.provenance.get("runtime"),
            "seconds": round(time.perf_counter() - start, 1),
            "four-way agreement": round(sum(r == labels[i] for r, i in zip(said, rows)) / len(rows), 3),
            "confusion (people -> judge)": dict(Counter(f"{labels[i]} -> {r}" for r, i in zip(said, rows))),
        }
        if args.probe is None:
            report["llm"] = section | breakdown(key, truth, [r == "attempts" for r in said])
        else:
            report["probes"][lm.model_id] = section | {"seed": args.probe, "ids": [key[i]["id"] for i in rows]}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def probe_rows(labels: list[str], seed: int) -> list[int]:
    """Every misread, and 15 attempts and 10 refusals drawn with `seed`: can a judge tell misreads at all?"""
    rng = random.Random(seed)
    of = {label: [i for i, x in enumerate(labels) if x == label] for label in ("misreads", "attempts", "refuses")}
    return of["misreads"] + rng.sample(of["attempts"], 15) + rng.sample(of["refuses"], 10)


if __name__ == "__main__":
    main()
