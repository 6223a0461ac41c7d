"""What the precomputed files offer the app: one file's top-10 and score matrix, and the word-salad limit.

Missing or damaged files give a note on screen, never an error: the app works without them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ablation import Head
from .precomputed import PRECOMPUTED_DIR, Precomputed, PrecomputedError, available, load, model_slug

# The prompt sets the precomputed head lists come from, as shown on screen.
PROMPT_SET_LABELS = {"jailbreakbench": "JailbreakBench", "maliciousinstruct": "MaliciousInstruct"}
# Rankings listed first when a file has them; any other ranking in the file follows, alphabetically.
PREFERRED_RANKINGS = ("generalized", "ships")


def precomputed_root() -> Path:
    """$SAFETY_HEADS_PRECOMPUTED, else the repository's precomputed/ folder."""
    env = os.environ.get("SAFETY_HEADS_PRECOMPUTED")
    return Path(env) if env else PRECOMPUTED_DIR


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
    top = [((layer, head), score) for layer, head, score in pre.top10[ranking]]
    scores = np.asarray(pre.scores[ranking], dtype=float) if ranking in pre.scores else None
    eps = pre.provenance.get("eps")
    n_prompts = (pre.provenance.get("prompt_set") or {}).get("n")
    details = ", ".join(f"{key} {value}" for key, value in (("N =", n_prompts), ("ε =", eps)) if value is not None)
    where = ", ".join([mode, details]) if details else mode
    note = f"Top-{len(top)} heads of **{model}** by **{ranking}** on {set_label} ({where})."
    if pre.command:
        note += f" Regenerate: `{pre.command}`"
    return HeadOptions(note, rankings, ranking, top, scores, pre)


def coherence_limit(model: str, root: Path | None = None) -> float | None:
    """The word-salad limit that `precompute --evaluate` calibrated for this model (its summary.json), if any."""
    path = (precomputed_root() if root is None else root) / model_slug(model) / "summary.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["coherence"]["limit"])
    except (OSError, ValueError, KeyError, TypeError):  # none calibrated, or a damaged file: text rules only
        return None


# Top-10 lists across models, prompt sets and modes, for the comparison grid.


def rankings_across(ranking: str | None, root: Path | None = None) -> dict[str, list[tuple[Head, float]]]:
    """Every file's top-10 by `ranking` (else its first ranking), keyed "model / set / mode"."""
    root = precomputed_root() if root is None else root
    out: dict[str, list[tuple[Head, float]]] = {}
    for slug, prompt_set, mode in available(root):
        try:
            pre = load(slug, prompt_set, mode, root)
        except PrecomputedError:
            continue
        names = ranking_names(pre)
        chosen = ranking if ranking in names else (names[0] if names else None)
        if chosen is None:
            continue
        label = f"{slug} / {PROMPT_SET_LABELS.get(prompt_set, prompt_set)} / {mode}"
        if chosen != ranking:
            label += f" ({chosen})"
        out[label] = [((layer, head), score) for layer, head, score in pre.top10[chosen]]
    return out
