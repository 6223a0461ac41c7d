"""What the precomputed files offer the app: one file's top-10 and score matrix, the files behind the paper's
figures, and the word-salad limit.

Missing or damaged files give a note on screen, never an error: the app works without them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ablation import Head
from .precomputed import Precomputed, PrecomputedError, available, load, precomputed_root

# The prompt sets the precomputed head lists come from, as shown on screen.
PROMPT_SET_LABELS = {"jailbreakbench": "JailbreakBench", "maliciousinstruct": "MaliciousInstruct"}
# Rankings listed first when a file has them; any other ranking in the file follows, alphabetically.
PREFERRED_RANKINGS = ("generalized", "ships")
FIGURE_RANKING = "generalized"  # the paper's figures place and colour heads by generalized Ships


def ranked(pre: Precomputed, ranking: str) -> list[tuple[Head, float]]:
    """The file's top-10 by `ranking` as [((layer, head), score)], best first."""
    return [((layer, head), score) for layer, head, score in pre.top10[ranking]]


def ranking_names(pre: Precomputed) -> list[str]:
    names = sorted(pre.top10)
    return [r for r in PREFERRED_RANKINGS if r in names] + [r for r in names if r not in PREFERRED_RANKINGS]


@dataclass
class HeadOptions:
    """What the controls offer for one model x prompt set x mode; `pre` is None when no file exists."""

    note: str
    rankings: list[str] = field(default_factory=list)
    ranking: str | None = None
    top: list[tuple[Head, float]] = field(default_factory=list)
    scores: np.ndarray | None = None  # (n_layers, n_heads) of the chosen ranking
    pre: Precomputed | None = None


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
    rankings = ranking_names(pre)
    if not rankings:
        return HeadOptions(f"The precomputed file for {model} / {set_label} / {mode} holds no ranking.", pre=pre)
    ranking = ranking if ranking in rankings else rankings[0]
    top = ranked(pre, ranking)
    scores = np.asarray(pre.scores[ranking], dtype=float) if ranking in pre.scores else None
    eps = pre.provenance.get("eps")
    n_prompts = (pre.provenance.get("prompt_set") or {}).get("n")
    details = ", ".join(f"{key} {value}" for key, value in (("N =", n_prompts), ("ε =", eps)) if value is not None)
    where = ", ".join([mode, details]) if details else mode
    note = f"Top-{len(top)} heads of **{model}** by **{ranking}** on {set_label} ({where})."
    if pre.command:
        note += f" Regenerate: `{pre.command}`"
    return HeadOptions(note, rankings, ranking, top, scores, pre)


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
