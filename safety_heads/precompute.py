"""`python -m safety_heads precompute`: attribute heads per prompt set x mode, then measure the ablations.

Writes precomputed/<model>/<set>-<mode>.json (score matrices, top-10 lists, Sahara group, provenance,
the command) and, with --evaluate, precomputed/<model>/summary.json (refusal rates and cross-set ASR of
each ranking's top-k, of the Sahara group and of random heads). The same command serves hub models on a
GPU, e.g. `--model meta-llama/Llama-2-7b-chat-hf --device cuda`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from . import __version__
from .ablation import DEFAULT_EPS, MODES, format_head
from .answers import DecodingConfig
from .attribution import RANKINGS, attribute, random_heads
from .coherence import calibrate_limit
from .datasets import HARMFUL_SETS, load_prompts, resolve
from .evaluation import Evaluator
from .models import TEMPLATES, LoadedModel, default_model, sha256_file
from .precomputed import PRECOMPUTED_DIR, Precomputed, load, model_slug, save
from .ships import top_heads


def code_version() -> str:
    """The package version and, inside a git checkout, its commit (with "+dirty" for local changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "safety_heads"], cwd=root, capture_output=True, text=True
        )
        return f"{__version__}+{commit.stdout.strip()[:12]}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.CalledProcessError):
        return __version__


def prompt_set_provenance(name: str, n: int | None) -> dict:
    path, column = resolve(name)
    return {"name": name, "file": path.name, "sha256": sha256_file(path), "column": column, "n": n}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_model())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", nargs="+", default=list(HARMFUL_SETS), help="harmful prompt sets to attribute on")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("-n", type=int, default=100, help="harmful prompts per set")
    p.add_argument("--benign", default="alpaca_seed_tasks", help="benign set for the refusal score's penalty")
    p.add_argument("--n-benign", type=int, default=50)
    p.add_argument("--eps", type=float, default=DEFAULT_EPS)
    p.add_argument("--rank", type=int, default=1, help="r: singular vectors compared by generalized Ships")
    p.add_argument("--sahara-size", type=int, default=3)
    p.add_argument("--template", choices=TEMPLATES, default="chat")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=PRECOMPUTED_DIR)
    p.add_argument("--evaluate", action="store_true", help="also measure ASR of the ablations (summary.json)")
    p.add_argument("--reuse", action="store_true", help="evaluate the heads of the files already in --out")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 3, 5])
    p.add_argument("--random-draws", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n-xstest", type=int, default=250)
    p.add_argument("--gen-batch-size", type=int, default=32)


def _progress(stage: str, done: int, total: int) -> None:
    print(f"\r  {stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def attribute_all(args, lm: LoadedModel, command: str) -> dict[tuple[str, str], Precomputed]:
    benign = load_prompts(args.benign, n=args.n_benign)
    results = {}
    for prompt_set in args.sets:
        harmful = load_prompts(prompt_set, n=args.n)
        for mode in args.modes:
            start = time.time()
            print(f"{prompt_set} {mode}: {len(harmful)} harmful, {len(benign)} benign prompts", file=sys.stderr)
            found = attribute(lm, harmful, benign, mode, args.eps, args.template, args.rank, args.sahara_size,
                              args.batch_size, _progress)  # fmt: skip
            result = Precomputed(
                model=lm.model_id,
                prompt_set=prompt_set,
                mode=mode,
                n_layers=lm.n_layers,
                n_heads=lm.n_heads,
                scores={name: m.tolist() for name, m in found.scores.items()},
                top10={name: [(h[0], h[1], s) for h, s in top_heads(m, 10)] for name, m in found.scores.items()},
                sahara=[(s.head[0], s.head[1], s.angle) for s in found.sahara],
                provenance={
                    **lm.provenance,
                    "eps": args.eps,
                    "template": args.template,
                    "prompt_set": prompt_set_provenance(prompt_set, len(harmful)),
                    "benign_set": prompt_set_provenance(args.benign, len(benign)),
                    "rank": args.rank,
                    "sahara_size": args.sahara_size,
                    "code_version": args.code_version,
                    "device": args.device,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "seconds": round(time.time() - start, 1),
                    "refusal_first_tokens": sorted(set(found.refusal_tokens)),
                },
                command=command,
            )
            path = save(result, args.out)
            tops = {name: ", ".join(format_head(h) for h in result.top_heads(name, 3)) for name in RANKINGS}
            print(f"  wrote {path} ({result.provenance['seconds']} s); top-3 {tops}", file=sys.stderr)
            results[(prompt_set, mode)] = result
    return results


def evaluate_all(args, lm: LoadedModel, results: dict[tuple[str, str], Precomputed], command: str) -> Path:
    sets = {name: load_prompts(name, n=args.n) for name in args.sets}
    sets["xstest_safe"] = load_prompts("xstest_safe", n=args.n_xstest)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    benign = load_prompts(args.benign, n=args.n_benign)
    print(f"calibrating the coherence limit on {len(benign)} {args.benign} prompts", file=sys.stderr)
    coherence = calibrate_limit(lm, benign, args.template, args.max_new_tokens, batch_size=args.gen_batch_size)
    evaluator = Evaluator(lm, sets, args.eps, args.template, decoding, args.gen_batch_size, coherence["limit"])
    intact = {name: evaluator.run(name, [], "UA") for name in sets}
    refusal = {name: result.refusal for name, result in intact.items()}
    ablations = [evaluator.ablation("none", "UA", "-", name, []).to_json() for name in args.sets]
    # Cross-set: heads found on one set are evaluated on each other set.
    for (heads_from, mode), result in results.items():
        for evaluated_on in [s for s in args.sets if s != heads_from] or [heads_from]:
            print(f"evaluating {mode} heads from {heads_from} on {evaluated_on}", file=sys.stderr)
            for k in args.ks:
                for ranking in RANKINGS:
                    row = evaluator.ablation(ranking, mode, heads_from, evaluated_on, result.top_heads(ranking, k))
                    ablations.append(row.to_json())
                for draw in range(args.random_draws):
                    heads = random_heads(lm, k, seed=1000 * k + draw)
                    row = evaluator.ablation("random", mode, heads_from, evaluated_on, heads, draw=draw)
                    ablations.append(row.to_json())
            if result.sahara:
                group = [(layer, head) for layer, head, _ in result.sahara]
                ablations.append(evaluator.ablation("sahara", mode, heads_from, evaluated_on, group).to_json())
    summary = {
        "model": lm.model_id,
        "refusal": refusal,
        "opening_refusal": {name: result.opening_refusal for name, result in intact.items()},
        "degenerate": {name: result.degenerate for name, result in intact.items()},
        "ablations": ablations,
        "coherence": {
            "rule": "degenerate = under 32 characters, or a repeated substring, or the intact model's mean "
            "surprise (nats per token, given the prompt) above the limit",
            "calibration_set": prompt_set_provenance(args.benign, len(benign)),
            **coherence,
        },
        "provenance": {
            **lm.provenance,
            "eps": args.eps,
            "template": args.template,
            "decoding": {"strategy": "greedy", "max_new_tokens": args.max_new_tokens},
            "prompt_sets": [prompt_set_provenance(name, len(p)) for name, p in sets.items()],
            "random_seeds": "1000 * k + draw",
            "code_version": args.code_version,
            "device": args.device,
        },
        "command": command,
    }
    path = args.out / model_slug(lm.model_id) / "summary.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    answers_path = path.with_name("answers.jsonl")
    with open(answers_path, "w") as f:
        for key, answers in evaluator.answers.items():
            prompt_set, mode, heads = key
            row = {"set": prompt_set, "mode": mode, "heads": heads, "answers": answers}
            f.write(json.dumps(row | {"surprise": evaluator.surprise.get(key)}) + "\n")
    return path


def run(args) -> None:
    from .models import load_catalog_model

    command = "python -m safety_heads " + shlex.join(sys.argv[1:])
    lm = load_catalog_model(args.model)
    if not getattr(lm.model, "is_loaded_in_4bit", False):  # 4-bit models are placed on the GPU at load time
        lm.model.to(args.device)
    args.code_version = code_version()  # read once at the start: the tree may change during a long run
    print(f"{lm.model_id} on {args.device} ({platform.node()}), code {args.code_version}", file=sys.stderr)
    if args.reuse:
        results = {(s, m): load(lm.model_id, s, m, args.out) for s in args.sets for m in args.modes}
    else:
        results = attribute_all(args, lm, command)
    if args.evaluate:
        print(f"wrote {evaluate_all(args, lm, results, command)}", file=sys.stderr)
