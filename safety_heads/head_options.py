"""What the precomputed files offer the app: one file's top-10 and score matrix, the files behind the paper's
figures, and the word-salad limit.

Missing or damaged files give a note on screen, never an error: the app works without them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ablation import Head
from .precomputed import Precomputed, PrecomputedError, available, load, model_slug, precomputed_root
from .rankings import CONTROLS, basis, display_order

# The prompt sets the precomputed head lists come from, as shown on screen.
PROMPT_SET_LABELS = {"jailbreakbench": "JailbreakBench", "maliciousinstruct": "MaliciousInstruct"}
FIGURE_RANKING = "generalized"  # the paper's figures place and colour heads by generalized Ships


def ranked(pre: Precomputed, ranking: str) -> list[tuple[Head, float]]:
    """The file's top-10 by `ranking`, or a group search's heads in the order found, as [((layer, head), score)]."""
    return [((layer, head), score) for layer, head, score in pre.ranked(ranking)]


@dataclass
class HeadOptions:
    """What the controls offer for one model x prompt set x mode; `pre` is None when no file exists."""

    note: str
    rankings: list[str] = field(default_factory=list)
    ranking: str | None = None
    top: list[tuple[Head, float]] = field(default_factory=list)
    scores: np.ndarray | None = None  # (n_layers, n_heads) of the chosen ranking
    pre: Precomputed | None = None
    suggested: list[Head] = field(default_factory=list)  # selected while the visitor has chosen none


def head_options(
    model: str, prompt_set: str, mode: str, ranking: str | None = None, root: Path | None = None
) -> HeadOptions:
    """The precomputed top-10 and score matrix of one ranking; a note, never an error, when absent."""
    root = precomputed_root() if root is None else root
    set_label = PROMPT_SET_LABELS.get(prompt_set, prompt_set)
    try:
        pre = load(model, prompt_set, mode, root)
    except PrecomputedError as err:
        missing = "No precomputed" in str(err)
        why = "are not computed yet" if missing else f"could not be read ({err})"
        return HeadOptions(
            f"Head scores for **{model}** on {set_label} ({mode}) {why}. Type heads by hand "
            '(e.g. `3-1, 7-2`), or score the current prompt live in "Score this prompt".'
        )
    rankings = pre.rankings()
    if not rankings:
        return HeadOptions(f"The precomputed file for {model} / {set_label} / {mode} holds no ranking.", pre=pre)
    hint = suggestion(model, root)
    hint = hint if hint and (hint.prompt_set, hint.mode) == (prompt_set, mode) else None
    if ranking not in rankings:
        ranking = hint.ranking if hint else rankings[0]
    top = ranked(pre, ranking)
    drawn_on = basis(ranking)
    scores = np.asarray(pre.scores[drawn_on], dtype=float) if drawn_on in pre.scores else None
    eps = pre.provenance.get("eps")
    n_prompts = (pre.provenance.get("prompt_set") or {}).get("n")
    details = ", ".join(f"{key} {value}" for key, value in (("N =", n_prompts), ("ε =", eps)) if value is not None)
    where = ", ".join([mode, details]) if details else mode
    if ranking in pre.groups:
        note = (
            f"The **{ranking}** group of **{model}** on {set_label} ({where}): heads in the order the greedy "
            f"search added them; the map shows each head's own {drawn_on} score."
        )
    else:
        note = f"Top-{len(top)} heads of **{model}** by **{ranking}** on {set_label} ({where})."
    if pre.command:
        note += f" Regenerate: `{pre.command}`"
    if hint and hint.ranking == ranking:
        return HeadOptions(f"{note}\n\n{hint.note}", rankings, ranking, top, scores, pre, hint.heads)
    return HeadOptions(note, rankings, ranking, top, scores, pre)


@dataclass(frozen=True)
class Suggestion:
    """The heads the app selects for a model before the visitor chooses any, and why."""

    prompt_set: str  # the set the heads were found on
    mode: str
    ranking: str
    heads: list[Head]
    note: str


def suggestion(model: str, root: Path | None = None) -> Suggestion | None:
    """Of the measured cross-set ablations of at most 3 heads (summary.json), the ranking, mode and k with the
    highest coherent ASR on the prompts the intact model refuses, averaged over both directions; the heads
    are those found on JailbreakBench (the panel's first set). None where nothing was measured."""
    folder = (precomputed_root() if root is None else root) / model_slug(model)
    try:
        rows = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["ablations"]
        refused = [
            r
            for r in rows
            if r.get("subset") == "refused"
            and r["k"] <= 3
            and r["heads_from"] != r["evaluated_on"]
            and r["evaluated_on"] in PROMPT_SET_LABELS  # the two sets' cross directions, not a held-out set
        ]
    except (OSError, ValueError, KeyError, TypeError):  # none measured, or a damaged file
        return None
    cells: dict[tuple, list[dict]] = {}
    for row in refused:
        if row["ranking"] not in ("none", *CONTROLS):
            cells.setdefault((row["ranking"], row["mode"], row["k"]), []).append(row)
    if not cells:
        return None
    (ranking, mode, k), found = max(
        cells.items(), key=lambda cell: (len(cell[1]), np.mean([r["coherent_asr"] for r in cell[1]]), -cell[0][2])
    )
    row = next((r for r in found if r["heads_from"] == "jailbreakbench"), found[0])
    random = [
        r["coherent_asr"]
        for r in refused
        if (r["ranking"], r["mode"], r["k"], r["evaluated_on"]) == ("random", mode, k, row["evaluated_on"])
    ]
    heads = [(layer, head) for layer, head in row["heads"]]
    against = f", {k} random heads {np.mean(random):.2f}" if random else ""
    note = (
        f"Suggested: {mode} on {', '.join(f'{layer}-{head}' for layer, head in heads)} ({ranking}, top {k} on "
        f"{PROMPT_SET_LABELS.get(row['heads_from'], row['heads_from'])}). Coherent ASR on the "
        f"{PROMPT_SET_LABELS.get(row['evaluated_on'], row['evaluated_on'])} prompts the intact model refuses: "
        f"{row['coherent_asr']:.2f}{against} (summary.json)."
    )
    return Suggestion(row["heads_from"], mode, ranking, heads, note)


def summary_rows(model: str, root: Path | None = None) -> list[dict]:
    """summary.json's grid rows for a model; none where it is missing or damaged."""
    path = (precomputed_root() if root is None else root) / model_slug(model) / "summary.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["ablations"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def method_curves(rows: list[dict], mode: str, metric: str) -> dict[str, tuple[dict, dict]]:
    """Per direction of the grid ("JailbreakBench → MaliciousInstruct"), on the prompts the intact model refuses:
    each ranking's {k: rate} and random heads' {k: [rate per draw]}."""
    panels: dict[str, tuple[dict, dict]] = {}
    for row in rows:
        if row.get("subset") != "refused" or row["mode"] != mode or row["ranking"] == "none":
            continue
        where = " → ".join(PROMPT_SET_LABELS.get(s, s) for s in (row["heads_from"], row["evaluated_on"]))
        curves, random = panels.setdefault(where, ({}, {}))
        if row["ranking"] == "random":  # the band is the paper's unrestricted draw
            random.setdefault(row["k"], []).append(row[metric])
        elif row["ranking"] not in CONTROLS:
            curves.setdefault(row["ranking"], {})[row["k"]] = row[metric]
    return {where: ({name: c[name] for name in display_order(c)}, r) for where, (c, r) in sorted(panels.items())}


def figure_file(model: str, prompt_set: str, mode: str, root: Path | None = None) -> Precomputed | None:
    """The file behind one marker set of the paper's figures; None where it is missing, damaged or has no
    generalized Ships ranking (the figures then say what is missing)."""
    try:
        pre = load(model, prompt_set, mode, precomputed_root() if root is None else root)
    except PrecomputedError:
        return None
    return pre if FIGURE_RANKING in pre.top10 else None


def precomputed_models(root: Path | None = None) -> list[str]:
    """Every model with precomputed files, those with the most files first (so a default pair has the most to
    compare), then by name."""
    counts = Counter(slug for slug, _, _ in available(precomputed_root() if root is None else root))
    return sorted(counts, key=lambda slug: (-counts[slug], slug))
