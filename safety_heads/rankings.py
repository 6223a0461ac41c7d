"""The rankings of heads: one registry that the precompute run, the stored files, the grid, the app and the
tables all read.

A single ranking (`Ranking`) scores every head alone: its (n_layers, n_heads) matrix is stored under `scores`
and its top 10 under `top10`. Most come together from one ablation sweep per prompt (`attribution`); one with
a scoring function of its own (`ScoredRanking`, e.g. the refusal direction) is computed beside them. A group
search (`GroupRanking`) adds heads greedily: its heads, in the order found, with the group's score after
each, are stored under `groups`, and the app draws them on the single-head score they grow from (`basis`).
The order of `REGISTRY` is the order of every list and table.

Adding a method: its scoring function, and one entry here (a `ScoredRanking` with its `score`, or a
`GroupRanking` with its `search` and the settings field that sizes it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .ablation import Head, Mode
from .attribution import refusal_group
from .models import LoadedModel, Template
from .patching import attribution_patching_scores, closing_length, patching_group, patching_scores
from .refusal_direction import direction_scores
from .sahara import sahara
from .ships import ActivationSet, Progress


@dataclass
class GroupInputs:
    """What a group search runs on: one prompt set and mode, and the single-head scores already found."""

    lm: LoadedModel
    harmful_prompts: list[str]
    benign_prompts: list[str]
    template: Template
    harmful: ActivationSet  # the same prompts' intact runs, for the searches that replay them
    benign: ActivationSet
    scores: dict[str, torch.Tensor]  # single ranking -> (n_layers, n_heads)
    mode: Mode
    eps: float
    rank: int  # singular vectors compared by the subspace angle
    candidates: int  # shortlist of a search that grows from a single ranking's top heads
    batch_size: int
    progress: Progress | None = None


GroupSearch = Callable[[GroupInputs, int], list[tuple[Head, float]]]


@dataclass
class ScoreInputs:
    """What a ranking with its own scoring function runs on: one prompt set and mode."""

    lm: LoadedModel
    harmful: list[str]
    benign: list[str]
    template: Template
    mode: Mode
    eps: float


# A scoring function: the (n_layers, n_heads) scores, and what to record beside them in the provenance.
SingleScore = Callable[[ScoreInputs], tuple[torch.Tensor, dict]]


def _direction(job: ScoreInputs) -> tuple[torch.Tensor, dict]:
    scores, direction = direction_scores(job.lm, job.harmful, job.benign, job.template)
    # Layer 0's input is the last token's embedding, the same for every prompt: no separation (nan, kept None).
    separation = [round(x, 3) if math.isfinite(x) else None for x in direction.separation]
    return scores, {"layer": direction.layer, "separation": separation}


def _patching(job: ScoreInputs) -> tuple[torch.Tensor, dict]:
    record = {"positions": "last", "closing_tokens": closing_length(job.lm, job.template)}
    return patching_scores(job.lm, job.harmful, job.benign, "last", job.template), record


def _patching_all(job: ScoreInputs) -> tuple[torch.Tensor, dict]:
    return patching_scores(job.lm, job.harmful, job.benign, "all", job.template), {"positions": "all"}


def _attribution_patching(job: ScoreInputs) -> tuple[torch.Tensor, dict]:
    record = {"positions": "last", "closing_tokens": closing_length(job.lm, job.template)}
    return attribution_patching_scores(job.lm, job.harmful, job.benign, "last", job.template), record


def _attribution_patching_all(job: ScoreInputs) -> tuple[torch.Tensor, dict]:
    return attribution_patching_scores(job.lm, job.harmful, job.benign, "all", job.template), {"positions": "all"}


def _sahara(job: GroupInputs, size: int) -> list[tuple[Head, float]]:
    steps = sahara(
        job.lm,
        job.harmful,
        size,
        job.mode,
        job.eps,
        job.rank,
        job.batch_size,
        job.progress,
        first=job.scores["generalized"],
    )
    return [(step.head, step.angle) for step in steps]


def _refusal_group(job: GroupInputs, size: int) -> list[tuple[Head, float]]:
    return refusal_group(
        job.lm,
        job.harmful,
        job.benign,
        job.scores["refusal"],
        size,
        job.candidates,
        job.mode,
        job.eps,
        job.batch_size,
        job.progress,
    )


def _patching_group(job: GroupInputs, size: int) -> list[tuple[Head, float]]:
    return patching_group(
        job.lm,
        job.harmful_prompts,
        job.benign_prompts,
        job.scores["patching"],
        size,
        job.candidates,
        job.template,
        job.batch_size,
    )


@dataclass(frozen=True)
class Ranking:
    """A single ranking: a score per head."""

    name: str
    description: str  # what it scores, in one line
    basis: str  # the single-head score the heatmap shows for it (a single ranking: itself)
    source: Literal["paper", "field", "ours"]  # Zhou et al. (ICLR 2025), the field's later methods, or ours


@dataclass(frozen=True)
class ScoredRanking(Ranking):
    """A single ranking with a scoring function of its own, computed beside the sweep's. Its intervention is
    its own, not the ablation mode's: one score serves a prompt set's files of every mode."""

    score: SingleScore


@dataclass(frozen=True)
class GroupRanking(Ranking):
    """A greedy group search: heads in the order found."""

    size_setting: str  # the `PrecomputeSettings` field that sizes it (0: not run)
    search: GroupSearch


REGISTRY: dict[str, Ranking] = {r.name: r for r in (
    Ranking("generalized", "principal angle between intact and ablated last-token activation subspaces",
            "generalized", "paper"),
    Ranking("ships", "next-token KL(intact || ablated) on harmful prompts", "ships", "paper"),
    GroupRanking("sahara", "greedy group on the subspace angle", "generalized", "paper", "sahara_size", _sahara),
    Ranking("refusal", "drop of the refusal's first token (log-prob) minus the benign KL", "refusal", "ours"),
    GroupRanking("refusal_group", "greedy group on the refusal score, from the refusal ranking's shortlist",
                 "refusal", "ours", "group_size", _refusal_group),
    ScoredRanking("direction", "write along the refusal direction (Arditi et al., 2024), last prompt token",
                  "direction", "field", _direction),
    ScoredRanking("patching", "activation patching: the head's harmless mean at the prompt's closing tokens; "
                  "drop of the refusal's first token (log-prob)", "patching", "field", _patching),
    ScoredRanking("patching_all", "activation patching at every prompt position, toward the head's mean over "
                  "every harmless token", "patching_all", "field", _patching_all),
    ScoredRanking("attribution_patching", "activation patching to first order: gradient x (harmless mean - "
                  "activation), one backward pass per prompt", "attribution_patching", "field",
                  _attribution_patching),
    ScoredRanking("attribution_patching_all", "attribution patching at every prompt position, toward the head's "
                  "mean over every harmless token", "attribution_patching_all", "field", _attribution_patching_all),
    GroupRanking("patching_group", "greedy group on activation patching (the group patched together), from the "
                 "patching ranking's shortlist", "patching", "field", "patching_group_size", _patching_group),
)}  # fmt: skip
GROUPS: dict[str, GroupRanking] = {name: r for name, r in REGISTRY.items() if isinstance(r, GroupRanking)}
SCORED: dict[str, ScoredRanking] = {name: r for name, r in REGISTRY.items() if isinstance(r, ScoredRanking)}
SINGLE = tuple(name for name in REGISTRY if name not in GROUPS)
SWEPT = tuple(name for name in SINGLE if name not in SCORED)  # the rankings `attribution.attribute` gives
# The grid's controls, not methods: k heads drawn from all, or from those outside every ranking's top 10.
CONTROLS = ("random", "random_outside")


def display_order(names) -> list[str]:
    """Names in the registry's order; names it lacks (a file from elsewhere) follow, alphabetically."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))


def basis(name: str) -> str:
    """The score matrix a ranking's heads are drawn on."""
    return REGISTRY[name].basis if name in REGISTRY else name
