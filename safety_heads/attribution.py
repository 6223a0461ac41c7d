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
Sahara then adds heads greedily on the subspace angle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .ablation import Head, Mode
from .models import LoadedModel, Template
from .sahara import SaharaStep, sahara
from .ships import (
    ActivationSet,
    Progress,
    _logits,
    all_heads,
    kl_from_logits,
    record_prompts,
    subspace_angle,
    sweep,
)

RANKINGS = ("ships", "generalized", "refusal")
StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Attribution:
    scores: dict[str, torch.Tensor]  # ranking -> (n_layers, n_heads)
    sahara: list[SaharaStep]
    refusal_tokens: list[str]  # the intact first answer token per harmful prompt


def _sweep_all(
    lm: LoadedModel, acts: ActivationSet, mode: Mode, eps: float, batch_size: int, progress: Progress | None
) -> torch.Tensor:
    """(n_heads_total, N, d): every single-head ablation's last hidden state, per prompt."""
    heads = [[h] for h in all_heads(lm)]
    out = torch.empty(len(heads), len(acts.bases), acts.bases[0].last_hidden.shape[0])
    for n, base in enumerate(acts.bases):
        out[:, n] = sweep(lm, base, heads, mode, eps, batch_size)
        if progress:
            progress(n + 1, len(acts.bases))
    return out


def _per_prompt_logprobs(lm: LoadedModel, hidden: torch.Tensor, batch_size: int) -> torch.Tensor:
    """log-softmax of the logits of (S, d) hidden states, (S, V), float64."""
    return torch.cat([torch.log_softmax(_logits(lm, h).double(), -1).cpu() for h in hidden.split(batch_size)])


@torch.no_grad()
def attribute(
    lm: LoadedModel,
    harmful: Sequence[str],
    benign: Sequence[str],
    mode: Mode,
    eps: float,
    template: Template = "chat",
    rank: int = 1,
    sahara_size: int = 3,
    batch_size: int = 64,
    progress: StageProgress | None = None,
) -> Attribution:
    """All rankings of all heads for one prompt set and mode (see the module docstring)."""
    L, H = lm.n_layers, lm.n_heads

    def stage(name: str) -> Progress:
        return lambda done, total: progress(name, done, total) if progress else None

    acts = record_prompts(lm, harmful, template)
    ablated = _sweep_all(lm, acts, mode, eps, batch_size, stage("harmful prompts"))  # (S, N, d)
    ships_scores = torch.zeros(L * H)
    refusal_drop = torch.zeros(L * H)
    first_tokens = []
    for n, base in enumerate(acts.bases):
        base_logp = torch.log_softmax(base.logits.double(), -1).cpu()
        token = int(base_logp.argmax())
        first_tokens.append(lm.tokenizer.decode([token]))
        logp = _per_prompt_logprobs(lm, ablated[:, n], batch_size)  # (S, V)
        ships_scores += (base_logp.exp() * (base_logp - logp)).sum(-1).clamp_min(0).float()
        refusal_drop += (base_logp[token] - logp[:, token]).float()
    matrix = acts.matrix
    generalized = torch.tensor([subspace_angle(matrix, ablated[s], rank) for s in range(L * H)])

    benign_acts = record_prompts(lm, benign, template)
    benign_kl = torch.zeros(L * H)
    benign_ablated = _sweep_all(lm, benign_acts, mode, eps, batch_size, stage("benign prompts"))
    for n, base in enumerate(benign_acts.bases):
        benign_kl += torch.cat(
            [kl_from_logits(base.logits, _logits(lm, h)).cpu() for h in benign_ablated[:, n].split(batch_size)]
        ).float()

    scores = {
        "ships": (ships_scores / len(harmful)).view(L, H),
        "generalized": generalized.view(L, H),
        "refusal": (refusal_drop / len(harmful) - benign_kl / len(benign)).view(L, H),
    }
    first = scores["generalized"]
    steps = sahara(lm, acts, sahara_size, mode, eps, rank, batch_size, stage("sahara"), first) if sahara_size else []
    return Attribution(scores, steps, first_tokens)


def random_heads(lm: LoadedModel, k: int, seed: int) -> list[Head]:
    """k distinct heads drawn uniformly, reproducibly: the control for any ranking's top k."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(lm.n_layers * lm.n_heads, generator=generator)[:k]
    return sorted((int(i) // lm.n_heads, int(i) % lm.n_heads) for i in index)
