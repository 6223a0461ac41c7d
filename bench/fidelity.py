"""Does a low-bit runtime give the model's verdicts? Its answers against the float32 grid's, prompt by prompt.

The float32 reference is what the cross-set grid recorded (`precomputed/<model>/answers.jsonl` and
`summary.json`: greedy, 64 new tokens, batches of 32, the grid's eps and coherence limit). This script answers
the same cells on the chosen runtime through the grid's own `Evaluator`, in batches of 8 (a layer takes the
low-bit kernel up to 8 rows, so every decoding step does; prefill, with more rows, is float32's), and compares:
1. labels, prompt by prompt (refusal / compliance / short / degenerate, the word-salad limit applied to
   each runtime's own surprise): the intact model on JailbreakBench, MaliciousInstruct and the grid's 50
   XSTest-safe prompts, and each headline k = 3 cell (the refusal ranking and the refusal group, UA and SC,
   both directions, with its XSTest-safe answers);
2. each cell's coherent ASR, on all prompts and on the refused ones, against the float32 row;
3. with `--attribution N`: every single-head ranking's top 10 from N refused JailbreakBench prompts (and 8
   benign ones for the refusal score), float32 vs the runtime, heads kept.

Cells are written to `--out` as they finish; `--reuse` skips those already there.
Usage: python bench/fidelity.py [--runtime int4] [--out bench/results/fidelity_int4.json] [--attribution 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safety_heads.ablation import MODES
from safety_heads.answers import DecodingConfig
from safety_heads.attribution import attribute, benign_kl
from safety_heads.coherence import with_surprise
from safety_heads.datasets import load_prompts, load_stratified
from safety_heads.evaluation import Evaluator
from safety_heads.judge import RefusalJudge, attack_success
from safety_heads.models import default_model, load_model
from safety_heads.precomputed import model_slug, precomputed_root
from safety_heads.rankings import SWEPT
from safety_heads.ships import record_prompts, top_heads

HEADLINE = ("refusal", "refusal_group")
SETS = ("jailbreakbench", "maliciousinstruct")


def reference(model: str) -> tuple[dict, dict[tuple, dict]]:
    folder = precomputed_root() / model_slug(model)
    summary = json.loads((folder / "summary.json").read_text())
    answers = {}
    for line in (folder / "answers.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers[(row["set"], row["mode"], tuple(tuple(h) for h in row["heads"]))] = row
    return summary, answers


def cells(summary: dict, modes: list[str]) -> list[tuple[str, str, str, str, list]]:
    """(ranking, mode, heads from, answered on, heads): the intact model first, then the headline k = 3 cells
    (the app's suggestion, SC refusal ranking from JailbreakBench, first among them)."""
    out = [("none", "-", "-", name, []) for name in SETS]
    for row in summary["ablations"]:
        if row["k"] == 3 and row["ranking"] in HEADLINE and row.get("subset") == "all" and row["mode"] in modes:
            out.append((row["ranking"], row["mode"], row["heads_from"], row["evaluated_on"], row["heads"]))
    suggested = ("refusal", "SC", "jailbreakbench")
    return out[:2] + sorted(out[2:], key=lambda cell: cell[:3] != suggested)


def labels(answers: list[str], surprise: list[float], limit: float) -> list:
    judge = RefusalJudge()
    return [with_surprise(judge(a), x, limit) for a, x in zip(answers, surprise, strict=True)]


def compare_key(evaluator: Evaluator, key: tuple, reference: dict, limit: float, refused: list[int] | None) -> dict:
    """One set under one ablation, the runtime's labels against float32's, prompt by prompt."""
    ours = [v.label for v in evaluator.verdicts[key]]
    theirs = [v.label for v in labels(reference["answers"], reference["surprise"], limit)]
    asr = {}
    for subset, rows in {"all": None, "refused": refused}.items():
        if subset == "all" or rows:
            pick = range(len(ours)) if rows is None else rows
            asr[subset] = attack_success([evaluator.verdicts[key][i] for i in pick]).coherent_asr
    return {
        "n": len(ours),
        "same_label": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "changed": [[i, b, a] for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b],
        "same_answer": sum(a == b for a, b in zip(evaluator.answers[key], reference["answers"], strict=True)),
        "coherent_asr": asr,
    }


def answer_cells(args, lm, summary: dict, answers: dict, done: dict) -> None:
    settings = summary["settings"]
    limit = summary["coherence"]["limit"]
    sets = {name: load_prompts(name, n=settings["n"]) for name in SETS}
    sets["xstest_safe"] = load_stratified("xstest_safe", "type", settings["xstest_per_type"])
    decoding = DecodingConfig(max_new_tokens=settings["decoding"]["max_new_tokens"])
    evaluator = Evaluator(lm, sets, settings["eps"], settings["template"], decoding, args.batch_size, limit)
    for name, saved in done["answers"].items():  # a restart keeps what was answered
        key = tuple(json.loads(name))
        key = (key[0], key[1], tuple(tuple(h) for h in key[2]))
        evaluator.answers[key], evaluator.surprise[key] = saved["answers"], saved["surprise"]
        evaluator.verdicts[key] = labels(saved["answers"], saved["surprise"], limit)
    behaviour = json.loads((precomputed_root() / model_slug(lm.model_id) / "behaviour.json").read_text())
    for ranking, mode, _heads_from, evaluated_on, heads in cells(summary, args.modes)[: args.cells]:
        start = time.perf_counter()
        heads_t = tuple(sorted(tuple(h) for h in heads))
        for prompt_set in (evaluated_on, "xstest_safe"):
            key = (prompt_set, mode if heads else "-", heads_t)
            name = json.dumps(key)
            if name in done["sets"]:
                continue
            evaluator.run(prompt_set, list(heads_t), mode if heads else "UA")
            done["answers"][name] = {"answers": evaluator.answers[key], "surprise": evaluator.surprise[key]}
            refused = behaviour["sets"][prompt_set]["refused_rows"] if prompt_set in SETS else None
            done["sets"][name] = compare_key(evaluator, key, answers[key], limit, refused)
            f32 = {
                r.get("subset"): r["coherent_asr"]
                for r in summary["ablations"]
                if (r["ranking"], r["evaluated_on"], r["heads"]) == (ranking, prompt_set, heads)
                and (r["mode"] == mode or not heads)
            }
            done["sets"][name]["float32_coherent_asr"] = f32 or None
            done["sets"][name]["seconds"] = round(time.perf_counter() - start, 1)
            args.out.write_text(json.dumps(done, indent=1))
            result = done["sets"][name]
            print(
                name,
                f"same label {result['same_label']} of {result['n']}; coherent ASR {result['coherent_asr']}"
                f" (float32 {f32}); {result['seconds']} s",
                flush=True,
            )


def attribution_tops(args, runtime: str) -> dict:
    lm = load_model(args.model, runtime=runtime)
    behaviour = json.loads((precomputed_root() / model_slug(lm.model_id) / "behaviour.json").read_text())
    prompts = load_prompts("jailbreakbench")
    harmful = [prompts[i] for i in behaviour["sets"]["jailbreakbench"]["refused_rows"][: args.attribution]]
    benign = load_prompts("alpaca_seed_tasks", n=8)
    acts, benign_acts = record_prompts(lm, harmful, "chat"), record_prompts(lm, benign, "chat")
    tops = {}
    for mode in MODES:
        start = time.perf_counter()
        found = attribute(lm, acts, benign_kl(lm, benign_acts, mode, 1e-5), mode, 1e-5)
        tops[mode] = {r: [list(h) for h, _ in top_heads(found.scores[r])] for r in SWEPT}
        tops[mode]["seconds"] = round(time.perf_counter() - start, 1)
        print(runtime, mode, tops[mode], flush=True)
    return tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--runtime", default="int4")
    parser.add_argument("--batch-size", type=int, default=8, help="8 rows: every decoding step takes the kernels")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--attribution", type=int, default=0, help="refused JailbreakBench prompts to attribute on")
    parser.add_argument("--skip-cells", action="store_true")
    parser.add_argument("--cells", type=int, default=None, help="only the first N cells (intact ones first)")
    parser.add_argument("--modes", nargs="+", default=["SC", "UA"])
    args = parser.parse_args()
    args.out = args.out or Path(f"bench/results/fidelity_{args.runtime}.json")
    done = json.loads(args.out.read_text()) if args.reuse and args.out.is_file() else {}
    done.setdefault("runtime", args.runtime)
    done.setdefault("sets", {})
    done.setdefault("answers", {})
    if not args.skip_cells:
        summary, answers = reference(args.model)
        start = time.perf_counter()
        lm = load_model(args.model, runtime=args.runtime)
        done["load_seconds"] = round(time.perf_counter() - start, 1)
        done["provenance"] = lm.provenance
        answer_cells(args, lm, summary, answers, done)
        del lm
    if args.attribution and "attribution" not in done:
        tops = {rt: attribution_tops(args, rt) for rt in ("float32", args.runtime)}
        f32, ours = tops["float32"], tops[args.runtime]
        kept = {
            m: {r: len({tuple(h) for h in f32[m][r]} & {tuple(h) for h in ours[m][r]}) for r in SWEPT} for m in MODES
        }
        done["attribution"] = {"prompts": args.attribution, "tops": tops, "top10_kept": kept}
        args.out.write_text(json.dumps(done, indent=1))
        print("top-10 kept:", kept)
    total = sum(s["n"] for s in done["sets"].values())
    same = sum(s["same_label"] for s in done["sets"].values())
    if total:
        print(f"same label as float32: {same} of {total} ({same / total:.3f})")


if __name__ == "__main__":
    main()
