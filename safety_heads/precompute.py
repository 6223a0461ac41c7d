"""`python -m safety_heads precompute`: attribute heads per prompt set x mode, then measure the ablations.

Writes precomputed/<model>/<set>-<mode>.json (score matrices, top-10 lists, the group searches, provenance,
the command) and, with --evaluate, precomputed/<model>/summary.json (refusal rates and cross-set ASR of
each ranking's top-k, of the groups' first k heads and of random heads). The same command serves hub models on a
GPU, e.g. `--model meta-llama/Llama-2-7b-chat-hf --device cuda`.
"""

from __future__ import annotations

import platform
import shlex
import sys
import time

import torch
import transformers

from .ablation import Mode, format_head
from .attribution import attribute, benign_kl
from .behaviour import refused_rows
from .datasets import load_prompts
from .grid import evaluate_all
from .models import LoadedModel
from .precomputed import Precomputed, load, save
from .provenance import code_version, prompt_set_provenance
from .rankings import GROUPS, SCORED, SINGLE, GroupInputs, ScoreInputs
from .settings import Invocation, PrecomputeSettings
from .ships import record_prompts, top_heads


def _stage(stage: str):
    def progress(done: int, total: int) -> None:
        print(f"\r  {stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return progress


def harmful_prompts(s: PrecomputeSettings, model: str, prompt_set: str) -> tuple[list[str], list[int] | None]:
    """The first n prompts of the set, or with --refused the first n the intact model refuses (and their rows)."""
    if not s.refused:
        return load_prompts(prompt_set, n=s.n), None
    rows = refused_rows(model, prompt_set, s.out)[: s.n]
    prompts = load_prompts(prompt_set)
    return [prompts[i] for i in rows], rows


def attribute_all(s: PrecomputeSettings, lm: LoadedModel, run: Invocation) -> dict[tuple[str, Mode], Precomputed]:
    benign = load_prompts(s.benign, n=s.n_benign)
    benign_acts = record_prompts(lm, benign, s.template)
    results = {}
    scored: Scored = {}
    for mode in s.modes:
        start = time.time()
        print(f"{mode}: benign sweep over {len(benign)} prompts, shared by every set", file=sys.stderr)
        penalty = benign_kl(lm, benign_acts, mode, s.eps, s.batch_size, _stage("benign prompts"))
        benign_seconds = round(time.time() - start, 1)
        for prompt_set in s.head_sets():
            harmful, rows = harmful_prompts(s, lm.model_id, prompt_set)
            start = time.time()
            print(f"{prompt_set} {mode}: {len(harmful)} harmful prompts", file=sys.stderr)
            acts = record_prompts(lm, harmful, s.template)
            found = attribute(lm, acts, penalty, mode, s.eps, s.rank, s.batch_size, _stage("harmful prompts"))
            result = Precomputed(
                model=lm.model_id,
                prompt_set=prompt_set,
                mode=mode,
                n_layers=lm.n_layers,
                n_heads=lm.n_heads,
                scores={name: m.tolist() for name, m in found.scores.items()},
                top10={name: [(h[0], h[1], x) for h, x in top_heads(m, 10)] for name, m in found.scores.items()},
                provenance={
                    **lm.provenance,
                    "eps": s.eps,
                    "template": s.template,
                    "prompt_set": prompt_set_provenance(prompt_set, len(harmful)) | {"rows": rows or "first n"},
                    "benign_set": prompt_set_provenance(s.benign, len(benign)),
                    "rank": s.rank,
                    "code_version": run.code_version,
                    "device": s.device,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "seconds": round(time.time() - start, 1),
                    "benign_sweep_seconds": benign_seconds,
                    "refusal_first_tokens": sorted(set(found.refusal_tokens)),
                },
                command=run.command,
            )
            path = save(result, s.out)  # the single-head rankings are kept even if a later step fails
            tops = {name: ", ".join(format_head(h) for h in result.top_heads(name, 3)) for name in found.scores}
            print(f"  wrote {path} ({result.provenance['seconds']} s); top-3 {tops}", file=sys.stderr)
            add_scores(s, lm, result, harmful, benign, scored)
            search_groups(s, lm, result, harmful, benign, run.command)
            results[(prompt_set, mode)] = result
    return results


Scored = dict[tuple[str, str], tuple[torch.Tensor, dict]]  # (ranking, prompt set) -> scores, provenance


def add_scores(
    s: PrecomputeSettings,
    lm: LoadedModel,
    result: Precomputed,
    harmful: list[str],
    benign: list[str],
    done: Scored,
) -> None:
    """The rankings of --rankings with a scoring function of their own that the file lacks, from the same prompts.
    They do not depend on the mode, so a score found for the set's file of one mode (`done`) is reused for the
    other."""
    for name, ranking in SCORED.items():
        if name in result.scores or name not in s.rankings:
            continue
        key = (name, result.prompt_set)
        if key not in done:
            start = time.time()
            matrix, record = ranking.score(ScoreInputs(lm, harmful, benign, s.template, result.mode, s.eps))
            record |= {"harmful_prompts": len(harmful), "benign_prompts": len(benign)}
            done[key] = matrix, record | {"seconds": round(time.time() - start, 1)}
        matrix, record = done[key]
        result.scores[name] = matrix.tolist()
        result.top10[name] = [(h[0], h[1], x) for h, x in top_heads(matrix, 10)]
        result.provenance.setdefault("scored", {})[name] = dict(record)
        top = ", ".join(format_head(h) for h in result.top_heads(name, 3))
        print(f"  {name}: top-3 {top} ({result.provenance['scored'][name]['seconds']} s)", file=sys.stderr)
        save(result, s.out)


def search_groups(
    s: PrecomputeSettings,
    lm: LoadedModel,
    result: Precomputed,
    harmful: list[str],
    benign: list[str],
    command: str,
) -> None:
    """Every group search of the registry whose size is set, on the first --group-n harmful and
    --group-n-benign benign prompts. Provenance is merged, so a later run of one search keeps the record of
    the others."""
    sizes = {name: getattr(s, group.size_setting) for name, group in GROUPS.items()}
    if not any(sizes.values()):
        return
    harmful, benign = harmful[: s.group_n], benign[: s.group_n_benign]
    acts = record_prompts(lm, harmful, s.template)
    inputs = GroupInputs(
        lm,
        harmful,
        benign,
        s.template,
        acts,
        record_prompts(lm, benign, s.template),
        {name: torch.tensor(result.scores[name]) for name in SINGLE if name in result.scores},
        result.mode,
        s.eps,
        s.rank,
        s.group_candidates,
        s.batch_size,
    )
    record = result.provenance.setdefault("groups", {})
    record.update(
        harmful_prompts=len(acts.bases),
        benign_prompts=len(inputs.benign.bases),
        candidates=s.group_candidates,
        first_head="the single-head ranking's top head, from all the attribution prompts",
    )
    for name, size in sizes.items():
        if size and GROUPS[name].basis not in inputs.scores:
            print(f"  {name}: skipped, the file has no {GROUPS[name].basis} scores to grow from", file=sys.stderr)
        elif size:
            start = time.time()
            inputs.progress = _stage(name)
            result.groups[name] = [(h[0], h[1], score) for h, score in GROUPS[name].search(inputs, size)]
            record.update({f"{name}_size": size, f"{name}_seconds": round(time.time() - start, 1)})
    record["seconds"] = round(sum(record.get(f"{name}_seconds", 0) for name in GROUPS), 1)
    record["commands"] = [*record.get("commands", []), command]
    print(f"  groups: {result.groups}", file=sys.stderr)
    save(result, s.out)


def run(s: PrecomputeSettings) -> None:
    from .models import load_catalog_model

    # The code's version is read once at the start: the tree may change during a long run.
    invocation = Invocation("python -m safety_heads " + shlex.join(sys.argv[1:]), code_version())
    # The low-bit runtimes are CPU kernels: an embedded model sent to a GPU runs in float32 there.
    lm = load_catalog_model(s.model, s.runtime or ("float32" if s.device != "cpu" else None))
    if not getattr(lm.model, "is_loaded_in_4bit", False):  # 4-bit models are placed on the GPU at load time
        lm.model.to(s.device)  # type: ignore[arg-type]  # transformers' @wraps types `to` unbound (self first)
    print(f"{lm.model_id} on {s.device} ({platform.node()}), code {invocation.code_version}", file=sys.stderr)
    if s.reuse:
        results = {(p, m): load(lm.model_id, p, m, s.out) for p in s.head_sets() for m in s.modes}
        scored: Scored = {}
        for (prompt_set, _), result in results.items():
            harmful = harmful_prompts(s, lm.model_id, prompt_set)[0]
            if s.add_scores:
                add_scores(s, lm, result, harmful, load_prompts(s.benign, n=s.n_benign), scored)
            if s.search_groups:
                search_groups(s, lm, result, harmful, load_prompts(s.benign, n=s.group_n_benign), invocation.command)
    else:
        results = attribute_all(s, lm, invocation)
    if s.evaluate:
        print(f"wrote {evaluate_all(s, lm, results, invocation)}", file=sys.stderr)
