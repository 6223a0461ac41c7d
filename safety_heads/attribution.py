"""Attribute refusal to heads over a prompt set: every ranking from one batched sweep per prompt.

For each head h and each of N harmful prompts, one replay (see `ships.sweep`) gives the ablated
last-layer, last-token hidden state. From those alone come:
- "ships": the paper's Ships, KL(p_base || p_ablated) of the next token, averaged over the prompts;
- "generalized": generalized Ships, the principal angle between intact and ablated activation subspaces;
- "refusal": our refusal-specific score (not in the paper). Ships ranks first the heads that every prompt
  needs, so it cannot tell "carries refusal" from "breaks the model". This score is the mean drop in
  log-probability of the intact answer's first token on harmful prompts (the token that starts the
  refusal), minus the mean KL the same ablation causes on benign prompts. Both are in nats: a head scores
  high only if removing it stops the refusal from starting while leaving ordinary answers alone.
Two greedy group searches follow: Sahara (the paper's) adds heads on the subspace angle; "refusal_group"
(ours) adds the head that most raises the group's refusal score, among the single-head refusal ranking's top
candidates (a shortlist, so a CPU can afford it; the shortlist size is recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from .ablation import Head, Mode
from .models import LoadedModel, decode
from .ships import (
    ActivationSet,
    Progress,
    ablating,
    all_heads,
    kl_from_logprobs,
    subspace_angles,
    sweep,
    sweep_prompts,
    unembed,
)


@dataclass
class Attribution:
    scores: dict[str, torch.Tensor]  # ranking -> (n_layers, n_heads)
    refusal_tokens: list[str]  # the intact first answer token per harmful prompt
    acts: ActivationSet  # the harmful prompts' intact runs, for the group searches


def _kl_and_drop(lm: LoadedModel, base, hidden: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For (S, d) ablated hidden states: (S,) next-token KL(intact || ablated), and (S,) how much each ablation
    lowers the log-probability of the intact first token. Computed in float64 on the model's device, chunk by
    chunk, so that only the (S,) results travel (on a GPU, moving (S, V) log-probabilities cost more than the sweep).
    """
    base_logp = torch.log_softmax(base.logits.double(), -1)
    token = int(base_logp.argmax())
    kl, drop = [], []
    for chunk in hidden.split(batch_size):
        logp = torch.log_softmax(unembed(lm, chunk).double(), -1)
        kl.append(kl_from_logprobs(base_logp, logp).cpu())
        drop.append((base_logp[token] - logp[:, token]).cpu())
    return torch.cat(kl).float(), torch.cat(drop).float()


@torch.no_grad()
def benign_kl(
    lm: LoadedModel,
    benign: ActivationSet,
    mode: Mode,
    eps: float,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """(n_layers, n_heads): the mean next-token KL each single-head ablation causes on benign prompts.

    It depends on the mode, not on the harmful set, so one sweep serves every set of that mode.
    """
    single = [[h] for h in all_heads(lm)]
    ablated = sweep_prompts(lm, benign, single, mode, eps, batch_size, progress)  # (S, N, d)
    kl = sum(_kl_and_drop(lm, base, ablated[:, n], batch_size)[0] for n, base in enumerate(benign.bases))
    # A sum of tensors (the set has prompts), not sum()'s start value 0.
    return (cast(torch.Tensor, kl) / len(benign.bases)).view(lm.n_layers, lm.n_heads)


@torch.no_grad()
def attribute(
    lm: LoadedModel,
    harmful: ActivationSet,
    benign_penalty: torch.Tensor,
    mode: Mode,
    eps: float,
    rank: int = 1,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> Attribution:
    """Every single-head ranking of all heads for one prompt set and mode, from one sweep per prompt.

    `benign_penalty` is `benign_kl` for the same mode: what the refusal score subtracts.
    """
    L, H = lm.n_layers, lm.n_heads
    single = [[h] for h in all_heads(lm)]
    ablated = sweep_prompts(lm, harmful, single, mode, eps, batch_size, progress)  # (S, N, d)
    ships_scores = torch.zeros(L * H)
    refusal_drop = torch.zeros(L * H)
    first_tokens = []
    for n, base in enumerate(harmful.bases):
        first_tokens.append(decode(lm.tokenizer, [int(base.logits.argmax())]))
        kl, drop = _kl_and_drop(lm, base, ablated[:, n], batch_size)
        ships_scores += kl
        refusal_drop += drop
    matrix = harmful.matrix
    generalized = torch.tensor(subspace_angles(matrix, ablated, rank))
    scores = {
        "ships": (ships_scores / len(harmful.bases)).view(L, H),
        "generalized": generalized.view(L, H),
        "refusal": (refusal_drop / len(harmful.bases)).view(L, H) - benign_penalty,
    }
    return Attribution(scores, first_tokens, harmful)


@torch.no_grad()
def group_refusal_scores(
    lm: LoadedModel,
    harmful: ActivationSet,
    benign: ActivationSet,
    head_sets: Sequence[Sequence[Head]],
    mode: Mode,
    eps: float,
    batch_size: int = 64,
) -> torch.Tensor:
    """(S,): the refusal score of ablating each head set together (mean harmful drop minus mean benign KL)."""
    drop = torch.zeros(len(head_sets))
    for base in harmful.bases:
        hidden = sweep(lm, base, head_sets, ablating(lm, mode, eps), batch_size)
        drop += _kl_and_drop(lm, base, hidden, batch_size)[1]
    kl = torch.zeros(len(head_sets))
    for base in benign.bases:
        kl += _kl_and_drop(lm, base, sweep(lm, base, head_sets, ablating(lm, mode, eps), batch_size), batch_size)[0]
    return drop / len(harmful.bases) - kl / len(benign.bases)


def greedy_group(
    single: torch.Tensor,
    size: int,
    candidates: int,
    group_scores: Callable[[list[list[Head]]], torch.Tensor],
    progress: Progress | None = None,
) -> list[tuple[Head, float]]:
    """Greedy: the best head of `single` (n_layers, n_heads), then each step the head of its top `candidates` whose
    joining gives the group the highest score (`group_scores`: one score per candidate group)."""
    n_heads = single.shape[1]
    order = single.flatten().argsort(descending=True)[:candidates].tolist()
    shortlist: list[Head] = [(i // n_heads, i % n_heads) for i in order]
    steps = [(shortlist[0], float(single.flatten()[order[0]]))]
    for step in range(1, size):
        group = [head for head, _ in steps]
        options = [h for h in shortlist if h not in group]
        scores = group_scores([[*group, h] for h in options])
        best = int(scores.argmax())
        steps.append((options[best], float(scores[best])))
        if progress:
            progress(step + 1, size)
    return steps


def refusal_group(
    lm: LoadedModel,
    harmful: ActivationSet,
    benign: ActivationSet,
    single: torch.Tensor,
    size: int,
    candidates: int,
    mode: Mode,
    eps: float,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> list[tuple[Head, float]]:
    """`greedy_group` on the refusal score of the heads ablated together; `single` is the refusal ranking."""

    def scores(head_sets: list[list[Head]]) -> torch.Tensor:
        return group_refusal_scores(lm, harmful, benign, head_sets, mode, eps, batch_size)

    return greedy_group(single, size, candidates, scores, progress)


def random_heads(lm: LoadedModel, k: int, seed: int, exclude: Collection[Head] = ()) -> list[Head]:
    """k distinct heads drawn uniformly and reproducibly from those not in `exclude`, sorted: the random control
    for any k heads, in the grid and in the app.

    The first k heads of one seeded permutation that are not excluded; without `exclude`, the draws recorded
    in precomputed/*/summary.json (seed 1000 * k + draw).
    """
    skipped = {tuple(h) for h in exclude}
    order = torch.randperm(lm.n_layers * lm.n_heads, generator=torch.Generator().manual_seed(seed))
    pool = [head for i in order.tolist() if (head := (i // lm.n_heads, i % lm.n_heads)) not in skipped]
    if k > len(pool):
        raise ValueError(f"Cannot draw {k} random heads from the {len(pool)} not ablated")
    return sorted(pool[:k])
