"""Read and write precomputed head scores: precomputed/<model>/<prompt set>-<mode>.json.

Each file holds, for one model x prompt set x mode, the full (n_layers, n_heads) score matrix of every
single ranking that was computed, its top-10 list, the group searches' heads (see `rankings`), the
provenance (model and file hashes, eps, template, prompt set and its hash, rank r, code commit) and the exact
command that regenerates it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .ablation import MODES, Head, Mode
from .rankings import display_order

PRECOMPUTED_DIR = Path(__file__).resolve().parent.parent / "precomputed"


def precomputed_root() -> Path:
    """$SAFETY_HEADS_PRECOMPUTED, else the repository's precomputed/ folder."""
    env = os.environ.get("SAFETY_HEADS_PRECOMPUTED")
    return Path(env) if env else PRECOMPUTED_DIR


def coherence_limit(model: str, root: Path | None = None) -> float | None:
    """The word-salad limit calibrated for this model by `precompute --evaluate` (summary.json) or by
    `behaviour` (behaviour.json), if any."""
    folder = (precomputed_root() if root is None else root) / model_slug(model)
    for name in ("summary.json", "behaviour.json"):
        try:
            return float(json.loads((folder / name).read_text(encoding="utf-8"))["coherence"]["limit"])
        except (OSError, ValueError, KeyError, TypeError):  # none calibrated, or a damaged file
            continue
    return None  # the text rules alone


def model_slug(model_id: str) -> str:
    return re.sub(r"[^a-z0-9.+-]+", "-", model_id.lower()).strip("-")


@dataclass
class Precomputed:
    model: str
    prompt_set: str
    mode: Mode
    n_layers: int
    n_heads: int
    scores: dict[str, list[list[float]]]  # ranking name -> (n_layers, n_heads) matrix
    top10: dict[str, list[tuple[int, int, float]]]  # ranking name -> [(layer, head, score)], best first
    provenance: dict = field(default_factory=dict)
    command: str = ""
    # Greedy group searches: name -> [(layer, head, the group's score after adding it)], in the order found.
    groups: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)

    def top_heads(self, ranking: str, k: int = 10) -> list[Head]:
        return [(layer, head) for layer, head, _ in self.top10[ranking][:k]]

    def rankings(self) -> list[str]:
        """Every head list in the file (the single rankings and the group searches that ran), in display order."""
        return display_order([*self.top10, *(g for g in self.groups if self.groups[g])])

    def ranked(self, ranking: str) -> list[tuple[int, int, float]]:
        """A ranking's top-10, or a group search's heads in the order found; [] where the file lacks it."""
        return self.top10.get(ranking) or self.groups.get(ranking, [])

    def heads(self, ranking: str, k: int) -> list[Head] | None:
        """A ranking's top k, or a group search's first k heads; None where the file has no k heads of it."""
        found = self.ranked(ranking)
        return [(layer, head) for layer, head, _ in found[:k]] if len(found) >= k else None


class PrecomputedError(RuntimeError):
    """A precomputed file is missing or unreadable; the message names the file."""


def path_for(model: str, prompt_set: str, mode: str, root: Path = PRECOMPUTED_DIR) -> Path:
    return root / model_slug(model) / f"{prompt_set}-{mode}.json"


def save(result: Precomputed, root: Path = PRECOMPUTED_DIR) -> Path:
    path = path_for(result.model, result.prompt_set, result.mode, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.__dict__, indent=1) + "\n")
    return path


def load(model: str, prompt_set: str, mode: str, root: Path = PRECOMPUTED_DIR) -> Precomputed:
    path = path_for(model, prompt_set, mode, root)
    if not path.is_file():
        raise PrecomputedError(f"No precomputed scores for {model} / {prompt_set} / {mode} ({path})")
    try:
        result = Precomputed(**_migrate(json.loads(path.read_text())))
        _check(result)
        return result
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise PrecomputedError(f"Precomputed file {path} is corrupt: {err}") from err


def _migrate(data: dict) -> dict:
    """Files written before the rankings registry kept Sahara's group in a field of its own."""
    if "sahara" in data:
        sahara = data.pop("sahara")
        data["groups"] = {"sahara": sahara, **(data.get("groups") or {})} if sahara else data.get("groups", {})
    return data


def _check(result: Precomputed) -> None:
    """Every part a reader uses has its type and shape, so a damaged file fails here, not deep in a caller."""
    if result.mode not in MODES:
        raise ValueError(f"mode {result.mode!r} is not one of {MODES}")
    if not all(isinstance(part, dict) for part in (result.scores, result.top10, result.provenance, result.groups)):
        raise TypeError("scores, top10, provenance and groups must be JSON objects")
    if not isinstance(result.provenance.get("prompt_set") or {}, dict):
        raise TypeError("provenance.prompt_set must be a JSON object")
    for name, matrix in result.scores.items():
        if len(matrix) != result.n_layers or any(len(row) != result.n_heads for row in matrix):
            raise ValueError(f"score matrix {name!r} is not {result.n_layers} x {result.n_heads}")
        [float(x) for row in matrix for x in row]  # text in a matrix raises here
    for name, top in result.top10.items():
        for layer, head, score in top:
            float(score)
            if not (isinstance(layer, int) and isinstance(head, int)):
                raise TypeError(f"top10 {name!r} names head {layer!r}-{head!r}")
            if not (0 <= layer < result.n_layers and 0 <= head < result.n_heads):
                raise ValueError(f"top10 {name!r} names head {layer}-{head}, outside the score matrix")


def available(root: Path = PRECOMPUTED_DIR) -> list[tuple[str, str, str]]:
    """(model slug, prompt set, mode) of every precomputed file present (`<set>-UA.json`, `<set>-SC.json`; the
    other files beside them, such as summary.json and hand-read.json, are not head scores)."""
    found = []
    for path in sorted(root.glob("*/*-*.json")):
        prompt_set, mode = path.stem.rsplit("-", 1)
        if mode in MODES:
            found.append((path.parent.name, prompt_set, mode))
    return found
