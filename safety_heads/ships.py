"""Ships and generalized Ships: how much ablating one head changes the model (paper, sections 3-4).

Ships (per prompt) scores head h by KL(p_base || p_ablated(h)) of the next-token distribution at the last
prompt position. Generalized Ships (per prompt set) stacks the last-layer, last-token activations of N
prompts into an (N, d) matrix, takes its SVD, and scores h by the principal angles (degrees, summed over the
top r) between the top-r left singular vectors of the intact and the ablated matrix, as the authors' code does.

The fast path rests on one fact: ablating a head in layer l leaves layers 0..l-1 untouched. So one intact
forward pass records the hidden state (and the keyword arguments) entering every decoder layer; an
ablation is then replayed from its earliest layer only, with many ablations batched as rows. Any other
change to heads that leaves the earlier layers alone replays the same way (activation patching does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import scipy.linalg
import torch

from .ablation import DEFAULT_EPS, Head, Mode, ablate, hooked
from .models import LoadedModel, Template, encode

Progress = Callable[[int, int], None]  # (done, total)
# What a replay changes: given one head set per batch row, a context in which forward passes apply them.
Intervention = Callable[[Sequence[Sequence[Head]]], AbstractContextManager]


def ablating(lm: LoadedModel, mode: Mode, eps: float) -> Intervention:
    """The paper's ablation as a replay's intervention: each row ablates its own heads."""
    return lambda head_sets: ablate(lm, head_sets, mode, eps, per_row=True)


def all_heads(lm: LoadedModel) -> list[Head]:
    return [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]


@dataclass
class BaseRun:
    """The intact forward pass of one prompt, kept so that ablations can resume at any layer."""

    layer_inputs: list[torch.Tensor]  # per layer: hidden state entering it, (1, T, d)
    layer_kwargs: list[dict]  # per layer: mask, rotary embeddings, ... as the model passed them
    last_hidden: torch.Tensor  # final-normed hidden state at the last position, (d,)
    logits: torch.Tensor  # next-token logits at the last position, (V,)


@torch.no_grad()
def record_base(lm: LoadedModel, input_ids: torch.Tensor) -> BaseRun:
    """Run one prompt (1, T) intact, recording what enters each decoder layer."""
    assert input_ids.dim() == 2 and input_ids.shape[0] == 1, input_ids.shape
    inputs: list[torch.Tensor] = []
    kwargs: list[dict] = []

    def record(module, args, kw):
        inputs.append(args[0] if args else kw["hidden_states"])
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})

    with hooked(lm, [(layer, "forward_pre_kwargs", record) for layer in lm.layers]):
        out = lm.model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
    assert len(inputs) == lm.n_layers
    return BaseRun(inputs, kwargs, out.hidden_states[-1][0, -1].float(), out.logits[0, -1].float())


@torch.no_grad()
def replay(
    lm: LoadedModel, base: BaseRun, head_sets: Sequence[Sequence[Head]], intervene: Intervention
) -> torch.Tensor:
    """Final-normed last-position hidden states, (B, d), with row b's heads head_sets[b] changed by `intervene`.

    Rows join the batch at the first layer they change (before that they equal the intact run), so
    every row runs exactly the layers its change can reach, and all rows share each layer's matmuls.
    """
    starts = [min((layer for layer, _ in heads), default=lm.n_layers) for heads in head_sets]
    order = sorted(range(len(head_sets)), key=starts.__getitem__)
    out = base.last_hidden.expand(len(head_sets), -1).clone()
    hidden = base.layer_inputs[0][:0]  # (0, T, d): no active rows yet
    active: list[int] = []
    for layer in range(min(starts), lm.n_layers):
        joining = [i for i in order if starts[i] == layer]
        if joining:
            active += joining
            entering = base.layer_inputs[layer].expand(len(joining), -1, -1)  # (b, T, d)
            hidden = torch.cat([hidden, entering])
        with intervene([head_sets[i] for i in active]):
            hidden = lm.layers[layer](hidden, **base.layer_kwargs[layer])
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    if active:
        out[active] = lm.model.get_decoder().norm(hidden[:, -1]).float().to(out.device)
    return out


def sweep(
    lm: LoadedModel,
    base: BaseRun,
    head_sets: Sequence[Sequence[Head]],
    intervene: Intervention,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Replay every head set, in batches of neighbouring start layers; (len(head_sets), d) in input order."""
    order = sorted(range(len(head_sets)), key=lambda i: min((layer for layer, _ in head_sets[i]), default=0))
    out = torch.empty(len(head_sets), base.last_hidden.shape[0])
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = replay(lm, base, [head_sets[i] for i in rows], intervene).cpu()
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out


def kl_from_logits(base_logits: torch.Tensor, ablated_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base || p_ablated) in nats, per row of ablated_logits (B, V); computed in float64."""
    return kl_from_logprobs(torch.log_softmax(base_logits.double(), -1), torch.log_softmax(ablated_logits.double(), -1))


def kl_from_logprobs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats from log-probabilities, per row of log_q (B, V)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def unembed(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits, (B, V) in float32, of final-normed hidden states (B, d) such as `replay` returns."""
    head = lm.model.get_output_embeddings()
    return head(hidden.to(device=lm.device, dtype=lm.model.dtype)).float()


def _prompt_ids(lm: LoadedModel, prompt: str, template: Template) -> torch.Tensor:
    return encode(lm, [prompt], template)["input_ids"]


def ships(
    lm: LoadedModel,
    prompt: str,
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    template: Template = "chat",
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Ships for every head of one prompt: an (n_layers, n_heads) matrix of KL divergences (fast path)."""
    base = record_base(lm, _prompt_ids(lm, prompt, template))
    heads = all_heads(lm)
    hidden = sweep(lm, base, [[h] for h in heads], ablating(lm, mode, eps), batch_size, progress)
    kl = torch.cat([kl_from_logits(base.logits, unembed(lm, chunk)).cpu() for chunk in hidden.split(batch_size)])
    return kl.float().view(lm.n_layers, lm.n_heads)


@torch.no_grad()
def ships_naive(
    lm: LoadedModel, prompt: str, mode: Mode = "UA", eps: float = DEFAULT_EPS, template: Template = "chat"
) -> torch.Tensor:
    """The reference: one full forward pass per head. Slow; kept to check the fast path against."""
    input_ids = _prompt_ids(lm, prompt, template)
    base_logits = lm.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[0, -1]
    scores = torch.zeros(lm.n_layers, lm.n_heads)
    for layer, head in all_heads(lm):
        with ablate(lm, [(layer, head)], mode, eps):
            logits = lm.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[:, -1]
        scores[layer, head] = kl_from_logits(base_logits, logits)[0].float()
    return scores


def top_heads(scores: torch.Tensor, k: int = 10) -> list[tuple[Head, float]]:
    """The k highest-scoring heads of an (L, H) matrix, best first."""
    values, index = scores.flatten().topk(min(k, scores.numel()))
    n_heads = scores.shape[1]
    return [((int(i) // n_heads, int(i) % n_heads), float(v)) for v, i in zip(values, index)]


def top_left_singular(x: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-`rank` left singular vectors of (..., N, d) matrices, (..., N, rank), in float64.

    N prompts are far fewer than d dimensions, so they come from the (N, N) Gram matrix's eigenvectors: an
    N x N eigenproblem per matrix instead of an N x d SVD, and batched over matrices.
    """
    assert 1 <= rank <= min(x.shape[-2:]), (rank, x.shape)
    x = x.double()
    vectors = torch.linalg.eigh(x @ x.transpose(-1, -2)).eigenvectors  # eigenvalues ascending
    return vectors[..., -rank:].flip(-1)


def subspace_angles(base: torch.Tensor, ablated: torch.Tensor, rank: int = 1, chunk: int = 64) -> list[float]:
    """For an (N, d) intact matrix and (S, N, d) ablated ones: the sum of the principal angles (degrees) between
    the top-`rank` left singular vectors of the intact matrix and of each ablated one."""
    assert ablated.dim() == 3 and ablated.shape[1:] == base.shape, (base.shape, ablated.shape)
    u_base = top_left_singular(base, rank).numpy()
    angles = []
    for part in ablated.split(chunk):
        for u in top_left_singular(part, rank).numpy():
            # scipy's algorithm stays accurate for tiny angles, where acos of a cosine near 1 does not.
            angles.append(math.degrees(float(scipy.linalg.subspace_angles(u_base, u).sum())))
    return angles


@dataclass
class ActivationSet:
    """Intact base runs of N prompts; the stacked last-layer, last-token activations are `matrix` (N, d)."""

    bases: list[BaseRun]

    @property
    def matrix(self) -> torch.Tensor:
        return torch.stack([b.last_hidden.cpu() for b in self.bases])


def record_prompts(
    lm: LoadedModel, prompts: Sequence[str], template: Template = "chat", progress: Progress | None = None
) -> ActivationSet:
    bases = []
    for i, prompt in enumerate(prompts):
        bases.append(record_base(lm, _prompt_ids(lm, prompt, template)))
        if progress:
            progress(i + 1, len(prompts))
    return ActivationSet(bases)


def sweep_prompts(
    lm: LoadedModel,
    acts: ActivationSet,
    head_sets: Sequence[Sequence[Head]],
    mode: Mode,
    eps: float,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """`sweep` on every prompt of the set: (S, N, d), the last hidden state with head_sets[s] ablated on prompt n.

    `progress` hears each prompt done.
    """
    ablated = torch.empty(len(head_sets), len(acts.bases), acts.bases[0].last_hidden.shape[0])  # (S, N, d)
    for n, base in enumerate(acts.bases):
        ablated[:, n] = sweep(lm, base, head_sets, ablating(lm, mode, eps), batch_size)
        if progress:
            progress(n + 1, len(acts.bases))
    return ablated


def subspace_shifts(
    lm: LoadedModel,
    acts: ActivationSet,
    head_sets: Sequence[Sequence[Head]],
    mode: Mode,
    eps: float,
    rank: int = 1,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> list[float]:
    """For each head set, the subspace angle between the intact and the ablated activation matrix."""
    ablated = sweep_prompts(lm, acts, head_sets, mode, eps, batch_size, progress)
    return subspace_angles(acts.matrix, ablated, rank)


def generalized_ships(
    lm: LoadedModel,
    acts: ActivationSet,
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    rank: int = 1,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Generalized Ships for every head: an (n_layers, n_heads) matrix of subspace angles in degrees."""
    angles = subspace_shifts(lm, acts, [[h] for h in all_heads(lm)], mode, eps, rank, batch_size, progress)
    return torch.tensor(angles).view(lm.n_layers, lm.n_heads)
