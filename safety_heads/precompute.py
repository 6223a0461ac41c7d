"""`python -m safety_heads precompute`: attribute heads per prompt set x mode, then measure the ablations.

Writes precomputed/<model>/<set>-<mode>.json (score matrices, top-10 lists, Sahara group, provenance,
the command) and, with --evaluate, precomputed/<model>/summary.json (refusal rates and cross-set ASR of
each ranking's top-k, of the Sahara group and of random heads). The same command serves hub models on a
GPU, e.g. `--model meta-llama/Llama-2-7b-chat-hf --device cuda`.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

from .ablation import DEFAULT_EPS, MODES, format_head
from .attribution import GROUP_SEARCHES, RANKINGS, attribute, benign_kl, refusal_group
from .behaviour import refused_rows
from .datasets import HARMFUL_SETS, load_prompts
from .grid import evaluate_all
from .models import TEMPLATES, LoadedModel, default_model
from .precomputed import PRECOMPUTED_DIR, Precomputed, load, save
from .provenance import code_version, prompt_set_provenance
from .runtime import add_runtime
from .sahara import sahara
from .ships import ActivationSet, record_prompts, top_heads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_model())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_runtime(p)
    p.add_argument("--sets", nargs="+", default=list(HARMFUL_SETS), help="harmful prompt sets to attribute on")
    p.add_argument("--heads-from", nargs="+", help="of --sets, only these give heads (one direction)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("-n", type=int, default=100, help="harmful prompts per set")
    p.add_argument("--refused", action="store_true", help="the first n prompts the intact model refuses (`behaviour`)")
    p.add_argument("--benign", default="alpaca_seed_tasks", help="benign set for the refusal score's penalty")
    p.add_argument("--n-benign", type=int, default=50)
    p.add_argument("--eps", type=float, default=DEFAULT_EPS)
    p.add_argument("--rank", type=int, default=1, help="r: singular vectors compared by generalized Ships")
    p.add_argument("--sahara-size", type=int, default=3, help="Sahara's group size (0: no Sahara)")
    p.add_argument("--group-size", type=int, default=5, help="our refusal group's size (0: none)")
    p.add_argument("--group-candidates", type=int, default=32, help="shortlist of the refusal group search")
    p.add_argument("--group-n", type=int, default=16, help="harmful prompts the group searches run on")
    p.add_argument("--group-n-benign", type=int, default=8, help="benign prompts the refusal group runs on")
    p.add_argument("--template", choices=TEMPLATES, default="chat")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=PRECOMPUTED_DIR)
    p.add_argument("--evaluate", action="store_true", help="also measure ASR of the ablations (summary.json)")
    p.add_argument("--reuse", action="store_true", help="evaluate the heads of the files already in --out")
    p.add_argument("--search-groups", action="store_true", help="with --reuse: run the group searches on those files")
    p.add_argument("--ks", nargs="+", type=int, default=[3, 1, 5], help="head counts, run in this order")
    p.add_argument("--rankings", nargs="+", default=[*RANKINGS, *GROUP_SEARCHES], help="rankings to evaluate")
    p.add_argument("--random-draws", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--xstest-per-type", type=int, default=5, help="XSTest-safe prompts per type (10 types)")
    p.add_argument("--gen-batch-size", type=int, default=32)


def _stage(stage: str):
    def progress(done: int, total: int) -> None:
        print(f"\r  {stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return progress


def head_sets(args) -> list[str]:
    """The prompt sets whose heads are found and evaluated: --heads-from, else every set."""
    if args.heads_from and not set(args.heads_from) <= set(args.sets):
        raise SystemExit(f"--heads-from {' '.join(args.heads_from)}: each must be one of --sets {' '.join(args.sets)}")
    return args.heads_from or args.sets


def harmful_prompts(args, model: str, prompt_set: str) -> tuple[list[str], list[int] | None]:
    """The first n prompts of the set, or with --refused the first n the intact model refuses (and their rows)."""
    if not args.refused:
        return load_prompts(prompt_set, n=args.n), None
    rows = refused_rows(model, prompt_set, args.out)[: args.n]
    prompts = load_prompts(prompt_set)
    return [prompts[i] for i in rows], rows


def attribute_all(args, lm: LoadedModel, command: str) -> dict[tuple[str, str], Precomputed]:
    benign = load_prompts(args.benign, n=args.n_benign)
    benign_acts = record_prompts(lm, benign, args.template)
    results = {}
    for mode in args.modes:
        start = time.time()
        print(f"{mode}: benign sweep over {len(benign)} prompts, shared by every set", file=sys.stderr)
        penalty = benign_kl(lm, benign_acts, mode, args.eps, args.batch_size, _stage("benign prompts"))
        benign_seconds = round(time.time() - start, 1)
        for prompt_set in head_sets(args):
            harmful, rows = harmful_prompts(args, lm.model_id, prompt_set)
            start = time.time()
            print(f"{prompt_set} {mode}: {len(harmful)} harmful prompts", file=sys.stderr)
            acts = record_prompts(lm, harmful, args.template)
            found = attribute(lm, acts, penalty, mode, args.eps, args.rank, args.batch_size, _stage("harmful prompts"))
            result = Precomputed(
                model=lm.model_id,
                prompt_set=prompt_set,
                mode=mode,
                n_layers=lm.n_layers,
                n_heads=lm.n_heads,
                scores={name: m.tolist() for name, m in found.scores.items()},
                top10={name: [(h[0], h[1], s) for h, s in top_heads(m, 10)] for name, m in found.scores.items()},
                provenance={
                    **lm.provenance,
                    "eps": args.eps,
                    "template": args.template,
                    "prompt_set": prompt_set_provenance(prompt_set, len(harmful)) | {"rows": rows or "first n"},
                    "benign_set": prompt_set_provenance(args.benign, len(benign)),
                    "rank": args.rank,
                    "code_version": args.code_version,
                    "device": args.device,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "seconds": round(time.time() - start, 1),
                    "benign_sweep_seconds": benign_seconds,
                    "refusal_first_tokens": sorted(set(found.refusal_tokens)),
                },
                command=command,
            )
            path = save(result, args.out)  # the single-head rankings are kept even if a group search fails
            tops = {name: ", ".join(format_head(h) for h in result.top_heads(name, 3)) for name in RANKINGS}
            print(f"  wrote {path} ({result.provenance['seconds']} s); top-3 {tops}", file=sys.stderr)
            search_groups(args, lm, result, harmful, benign_acts, command)
            results[(prompt_set, mode)] = result
    return results


def search_groups(
    args, lm: LoadedModel, result: Precomputed, harmful: list[str], benign: ActivationSet, command: str
) -> None:
    """Sahara and our refusal group, on the first --group-n harmful and --group-n-benign benign prompts.

    Provenance is merged, so a later run of one search keeps the record of the other.
    """
    if not (args.sahara_size or args.group_size):
        return
    acts = record_prompts(lm, harmful[: args.group_n], args.template)
    benign = ActivationSet(benign.bases[: args.group_n_benign])
    mode = result.mode
    record = result.provenance.setdefault("groups", {})
    record.update(
        harmful_prompts=len(acts.bases), benign_prompts=len(benign.bases),
        first_head="the single-head ranking's top head, from all the attribution prompts",
    )  # fmt: skip
    if args.sahara_size:
        start = time.time()
        first = torch.tensor(result.scores["generalized"])
        steps = sahara(lm, acts, args.sahara_size, mode, args.eps, args.rank, args.batch_size, _stage("sahara"), first)
        result.sahara = [(s.head[0], s.head[1], s.angle) for s in steps]
        record.update(sahara_size=args.sahara_size, sahara_seconds=round(time.time() - start, 1))
    if args.group_size:
        start = time.time()
        single = torch.tensor(result.scores["refusal"])
        group = refusal_group(lm, acts, benign, single, args.group_size, args.group_candidates, mode, args.eps,
                              args.batch_size, _stage("refusal group"))  # fmt: skip
        result.groups["refusal_group"] = [(h[0], h[1], score) for h, score in group]
        record.update(refusal_group_size=args.group_size, refusal_group_candidates=args.group_candidates,
                      refusal_group_seconds=round(time.time() - start, 1))  # fmt: skip
    record["seconds"] = round(record.get("sahara_seconds", 0) + record.get("refusal_group_seconds", 0), 1)
    record["commands"] = [*record.get("commands", []), command]
    print(f"  groups: sahara {result.sahara}, refusal {result.groups.get('refusal_group')}", file=sys.stderr)
    save(result, args.out)


def run(args) -> None:
    from .models import load_catalog_model

    command = "python -m safety_heads " + shlex.join(sys.argv[1:])
    # The low-bit runtimes are CPU kernels: an embedded model sent to a GPU runs in float32 there.
    lm = load_catalog_model(args.model, args.runtime or ("float32" if args.device != "cpu" else None))
    if not getattr(lm.model, "is_loaded_in_4bit", False):  # 4-bit models are placed on the GPU at load time
        lm.model.to(args.device)
    args.code_version = code_version()  # read once at the start: the tree may change during a long run
    print(f"{lm.model_id} on {args.device} ({platform.node()}), code {args.code_version}", file=sys.stderr)
    if args.reuse:
        results = {(s, m): load(lm.model_id, s, m, args.out) for s in head_sets(args) for m in args.modes}
        if args.search_groups:
            benign = record_prompts(lm, load_prompts(args.benign, n=args.group_n_benign), args.template)
            for (prompt_set, _), result in results.items():
                search_groups(args, lm, result, harmful_prompts(args, lm.model_id, prompt_set)[0], benign, command)
    else:
        results = attribute_all(args, lm, command)
    if args.evaluate:
        print(f"wrote {evaluate_all(args, lm, results, command)}", file=sys.stderr)
