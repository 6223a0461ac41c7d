"""The cross-set grid behind `precompute --evaluate`: heads found on one prompt set, answers on the other.

Every ranking's top k, the group searches' first k heads and random draws of k heads are each answered on
the other set and on a stratified slice of XSTest-safe under the same ablation. Each row is read twice from
the same answers: on all prompts of the set, and on the subset the intact model refused (from `behaviour`),
marked `"subset": "all" | "refused"` and never averaged together.

Rows are appended to summary.json as they finish (written atomically), in the order of `--ks` (headline k
first), and a restart with the same settings skips the rows already there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from .ablation import Head, Mode
from .answers import DecodingConfig
from .attribution import random_heads
from .behaviour import behaviour_path
from .coherence import calibrate_limit
from .datasets import load_prompts, load_stratified
from .evaluation import Evaluator, row_key
from .models import LoadedModel
from .precomputed import Precomputed, model_slug
from .provenance import prompt_set_provenance, write_json

COHERENCE_RULE = (
    "degenerate = under 32 characters, or a repeated substring, or the intact model's mean surprise "
    "(nats per token, given the prompt) above the limit"
)


def ablation_plan(
    args, lm: LoadedModel, results: dict[tuple[str, str], Precomputed]
) -> Iterator[tuple[str, Mode, str, str, list[Head], int | None]]:
    """(ranking, mode, heads from, evaluated on, heads, random draw) in the order they should run."""
    for k in args.ks:
        for (heads_from, mode), result in results.items():
            for evaluated_on in [s for s in args.sets if s != heads_from] or [heads_from]:
                for ranking in args.rankings:
                    if (heads := result.heads(ranking, k)) is not None:
                        yield ranking, mode, heads_from, evaluated_on, heads, None
                    else:  # a group search stops at its size; a ranking may be absent from older files
                        missing = f"{heads_from}-{mode}.json has fewer than {k} heads of {ranking}"
                        print(f"  skipped: {missing}", file=sys.stderr)
                for draw in range(args.random_draws):
                    yield "random", mode, heads_from, evaluated_on, random_heads(lm, k, seed=1000 * k + draw), draw


def coherence_for(args, lm: LoadedModel) -> dict:
    """The word-salad limit `behaviour` calibrated for this model, else one calibrated now."""
    path = behaviour_path(lm.model_id, args.out)
    if path.is_file() and "coherence" in (recorded := json.loads(path.read_text())):
        return recorded["coherence"] | {"from": path.name}
    benign = load_prompts(args.benign, n=args.n_benign)
    print(f"calibrating the coherence limit on {len(benign)} {args.benign} prompts", file=sys.stderr)
    found = calibrate_limit(lm, benign, args.template, args.max_new_tokens, batch_size=args.gen_batch_size)
    return found | {"calibration_set": prompt_set_provenance(args.benign, len(benign))}


def refused_subsets(args, lm: LoadedModel) -> dict[str, dict[str, list[int] | None]]:
    """Per harmful set, the subsets rows are read on: all, and the rows `behaviour` found refused (if known)."""
    path = behaviour_path(lm.model_id, args.out)
    recorded = json.loads(path.read_text())["sets"] if path.is_file() else {}
    subsets = {}
    for name in args.sets:
        rows = recorded.get(name, {}).get("refused_rows")
        subsets[name] = {"all": None} | ({"refused": [i for i in rows if i < args.n]} if rows is not None else {})
    return subsets


def evaluate_all(args, lm: LoadedModel, results: dict[tuple[str, str], Precomputed], command: str) -> Path:
    sets = {name: load_prompts(name, n=args.n) for name in args.sets}
    sets["xstest_safe"] = load_stratified("xstest_safe", "type", args.xstest_per_type)
    settings = {
        "eps": args.eps, "template": args.template, "n": args.n, "xstest_per_type": args.xstest_per_type,
        "decoding": {"strategy": "greedy", "max_new_tokens": args.max_new_tokens},
        "runtime": lm.provenance.get("runtime", "float32"),
    }  # fmt: skip
    path = args.out / model_slug(lm.model_id) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if "settings" in summary:  # summaries from before the low-bit runtimes were all made in float32
        summary["settings"].setdefault("runtime", "float32")
    if summary.get("ablations") and summary.get("settings") != settings:  # the old rows measure something else
        changed = {k: v for k, v in settings.items() if summary["settings"].get(k) != v}
        raise SystemExit(
            f"{path} holds {len(summary['ablations'])} rows measured with other settings than {changed} "
            f"(theirs: {summary['settings']}); run with those, or move the file (and answers.jsonl) to start anew"
        )
    if summary.get("settings") != settings:
        summary = {"settings": settings, "ablations": []}
        path.with_name("answers.jsonl").unlink(missing_ok=True)
    summary["coherence"] = summary.get("coherence") or {"rule": COHERENCE_RULE, **coherence_for(args, lm)}
    summary |= {
        "model": lm.model_id,
        "provenance": {
            **lm.provenance,
            "prompt_sets": [prompt_set_provenance(name, len(p)) for name, p in sets.items()],
            "refused_subset": "rows whose intact answer opens with a refusal (behaviour.json, 128 new tokens)",
            "random_seeds": "1000 * k + draw",
            "code_version": args.code_version,
            "device": args.device,
        },
        "command": command,
    }
    evaluator = Evaluator(
        lm, sets, args.eps, args.template, DecodingConfig(max_new_tokens=args.max_new_tokens),
        args.gen_batch_size, summary["coherence"]["limit"],
    )  # fmt: skip
    subsets = refused_subsets(args, lm)
    done = {row_key(row) for row in summary["ablations"]}
    written: set[tuple] = set()
    intact = [("none", "UA", "-", name, [], None) for name in args.sets]
    for ranking, mode, heads_from, evaluated_on, heads, draw in [*intact, *ablation_plan(args, lm, results)]:
        keys = {(ranking, mode, heads_from, evaluated_on, subset, len(heads), draw) for subset in subsets[evaluated_on]}
        if keys <= done:
            continue
        rows = evaluator.ablation(ranking, mode, heads_from, evaluated_on, heads, draw=draw,
                                  subsets=subsets[evaluated_on])  # fmt: skip
        summary["ablations"] += [row.to_json() for row in rows if row.key() not in done]
        done |= keys
        if ranking == "none":
            intact_result = evaluator.run(evaluated_on, [], "UA")
            for name in ("refusal", "opening_refusal", "degenerate"):
                summary.setdefault(name, {})[evaluated_on] = getattr(intact_result, name)
        write_json(path, summary)
        _append_answers(path.with_name("answers.jsonl"), evaluator, written)
        print(f"  {ranking} {mode} k={len(heads)} {heads_from} → {evaluated_on}: "
              + "; ".join(f"{r.subset} coherent ASR {r.coherent_asr:.2f}" for r in rows), file=sys.stderr)  # fmt: skip
    return path


def _append_answers(path: Path, evaluator: Evaluator, written: set[tuple]) -> None:
    """Write the answers not yet written (each (set, mode, heads) once)."""
    with open(path, "a") as f:
        for key, answers in evaluator.answers.items():
            if key not in written:
                prompt_set, mode, heads = key
                row = {"set": prompt_set, "mode": mode, "heads": heads, "answers": answers}
                f.write(json.dumps(row | {"surprise": evaluator.surprise.get(key)}) + "\n")
                written.add(key)
