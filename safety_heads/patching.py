"""Activation patching and attribution patching: how much of the refusal each head carries, measured by putting
a harmless value in place of its output.

Activation patching (mean ablation, as in Wang et al., 2023; Heimersheim & Nanda, 2024): on a harmful prompt,
one head's slice of the output projection's input (where SC acts) is replaced by its mean over harmless
prompts, and the head's score is how much that lowers the log-probability of the intact first answer token
(the token the refusal starts with), averaged over the harmful prompts. Where it is patched:
- "last": the prompt's closing positions, the chat template's tokens after the request that every prompt
  shares (`<|im_end|>\\n<|im_start|>assistant\\n`), each replaced by the harmless mean at the same position;
- "all": every position, by the head's mean over every harmless token.

Patching only the last P positions leaves every earlier one as it was (attention is causal), so the intact
prompt's key/value cache up to there serves every patched run, and each head costs P positions, not T.
Patching every position leaves every layer before the head's as it was, so each run is replayed from its
first patched layer (`ships.replay`, as the ablations are): on average about half the layers.

Attribution patching (Nanda, 2023; Syed et al., 2023) is the same change to first order, for every head at
once, from one backward pass per prompt: (mean - z) . d log p(token) / dz, summed over the patched positions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from .ablation import Head, HookKind, hook_point, hooked
from .attribution import greedy_group
from .models import LoadedModel, Template, encode
from .ships import all_heads, record_base, sweep, unembed

Positions = Literal["last", "all"]


def closing_length(lm: LoadedModel, template: Template = "chat") -> int:
    """How many last prompt tokens every prompt shares (the template's closing after the request); at least 1."""
    a, b = (encode(lm, [p], template)["input_ids"][0].tolist() for p in ("Name a colour.", "Is it raining?"))
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[-1 - shared] == b[-1 - shared]:
        shared += 1
    return max(shared, 1)


def _o_projs(lm: LoadedModel) -> list[nn.Module]:
    return [hook_point(lm, layer, "SC")[1] for layer in range(lm.n_layers)]


@torch.no_grad()
def harmless_means(
    lm: LoadedModel, prompts: Sequence[str], positions: Positions, last: int, template: Template = "chat"
) -> list[torch.Tensor]:
    """Per layer, the harmless mean of the output projection's input: (last, n_heads * head_dim) position by
    position from the end, or (1, n_heads * head_dim) over every token."""
    sums = [torch.zeros(0)] * lm.n_layers
    count = 0
    for prompt in prompts:  # one at a time: no padding to leave out
        seen: list[torch.Tensor] = []

        def keep(module, args, seen=seen) -> None:
            seen.append(args[0][0].float())  # (T, n_heads * head_dim)

        with hooked(lm, [(o_proj, "forward_pre", keep) for o_proj in _o_projs(lm)]):
            lm.model(**encode(lm, [prompt], template), use_cache=False, logits_to_keep=1)
        parts = [z[-last:] if positions == "last" else z.sum(0, keepdim=True) for z in seen]
        sums = [total + part if count else part for total, part in zip(sums, parts, strict=True)]
        count += 1 if positions == "last" else seen[0].shape[0]
    return [total / count for total in sums]


def _patch_hook(mask: torch.Tensor, target: torch.Tensor):
    """A pre-hook on an output projection: where mask[b, h], head h's slice of row b becomes `target`'s.

    mask: (B, n_heads) bool; target: (t, n_heads * head_dim) for the t positions run, or (1, ...) for all.
    """

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        B, t, width = x.shape
        n_heads = mask.shape[1]
        heads = x.view(B, t, n_heads, width // n_heads)
        patched = target[-t:].to(x.dtype).view(1, -1, n_heads, width // n_heads)
        where = mask.to(x.device)[:, None, :, None]  # the masks are built on the CPU, the model may be on a GPU
        return (torch.where(where, patched, heads).view(B, t, width), *args[1:])

    return hook


@contextmanager
def patched(lm: LoadedModel, head_sets: Sequence[Sequence[Head]], means: list[torch.Tensor]) -> Iterator[LoadedModel]:
    """Row b's heads head_sets[b] take their harmless means (`harmless_means`) in every forward pass in the block."""
    masks: dict[int, torch.Tensor] = {}
    for row, heads in enumerate(head_sets):
        for layer, head in heads:
            masks.setdefault(layer, torch.zeros(len(head_sets), lm.n_heads, dtype=torch.bool))[row, head] = True
    o_projs = _o_projs(lm)
    hooks: list[tuple[nn.Module, HookKind, Callable]] = [
        (o_projs[layer], "forward_pre", _patch_hook(mask, means[layer])) for layer, mask in masks.items()
    ]
    with hooked(lm, hooks):
        yield lm


@torch.no_grad()
def patched_logprobs(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    token: int,
    head_sets: Sequence[Sequence[Head]],
    means: list[torch.Tensor],
    start: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """(S,): log p(token) at the last position of one prompt (1, T), with head_sets[s] patched from position
    `start` on: after the intact prefix's cache, or (start 0) replayed from each row's first patched layer."""
    if not start:
        base = record_base(lm, input_ids)
        hidden = sweep(lm, base, head_sets, lambda rows: patched(lm, rows, means), batch_size)
        logits = torch.cat([unembed(lm, chunk) for chunk in hidden.split(batch_size)])
        return torch.log_softmax(logits.double(), -1)[:, token].cpu()
    prefix = lm.model(input_ids=input_ids[:, :start], use_cache=True).cache
    out = []
    for first in range(0, len(head_sets), batch_size):
        rows = head_sets[first : first + batch_size]
        cache = copy.deepcopy(prefix)  # every row starts from the intact prefix
        cache.batch_repeat_interleave(len(rows))
        with patched(lm, rows, means):
            logits = lm.model(
                input_ids=input_ids[:, start:].expand(len(rows), -1), cache=cache, use_cache=True, logits_to_keep=1
            ).logits[:, -1]
        out.append(torch.log_softmax(logits.double(), -1)[:, token].cpu())
    return torch.cat(out)


def _intact_runs(lm: LoadedModel, prompts: Sequence[str], template: Template) -> list[tuple[torch.Tensor, int, float]]:
    """Per prompt: its ids (1, T), the intact first answer token and that token's log-probability."""
    runs = []
    for prompt in prompts:
        input_ids = encode(lm, [prompt], template)["input_ids"]
        with torch.no_grad():
            logits = lm.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[0, -1]
        logp = torch.log_softmax(logits.double(), -1).cpu()
        token = int(logp.argmax())
        runs.append((input_ids, token, float(logp[token])))
    return runs


def _mean_drop(lm, runs, head_sets, means, positions: Positions, last: int, batch_size: int) -> torch.Tensor:
    """(S,): the mean drop over the prompts of the intact first token's log-probability, head_sets[s] patched."""
    drop = torch.zeros(len(head_sets), dtype=torch.float64)
    for input_ids, token, base in runs:
        start = input_ids.shape[1] - last if positions == "last" else 0
        drop += base - patched_logprobs(lm, input_ids, token, head_sets, means, start, batch_size)
    return drop / len(runs)


def patching_scores(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    positions: Positions = "last",
    template: Template = "chat",
    batch_size: int = 64,
) -> torch.Tensor:
    """(n_layers, n_heads): the mean drop of the intact first token's log-probability when the head is patched."""
    last = closing_length(lm, template)
    means = harmless_means(lm, harmless, positions, last, template)
    single = [[head] for head in all_heads(lm)]
    drop = _mean_drop(lm, _intact_runs(lm, harmful, template), single, means, positions, last, batch_size)
    return drop.float().view(lm.n_layers, lm.n_heads)


def patching_group(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    single: torch.Tensor,
    size: int,
    candidates: int,
    template: Template = "chat",
    batch_size: int = 64,
) -> list[tuple[Head, float]]:
    """`attribution.greedy_group` at the closing positions, on the drop when the whole group is patched at once;
    `single` is the patching ranking."""
    last = closing_length(lm, template)
    means = harmless_means(lm, harmless, "last", last, template)
    runs = _intact_runs(lm, harmful, template)

    def drops(head_sets: list[list[Head]]) -> torch.Tensor:
        return _mean_drop(lm, runs, head_sets, means, "last", last, batch_size)

    return greedy_group(single, size, candidates, drops)


def attribution_patching_scores(
    lm: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    positions: Positions = "last",
    template: Template = "chat",
) -> torch.Tensor:
    """(n_layers, n_heads): activation patching's drop to first order, from one backward pass per prompt."""
    last = closing_length(lm, template)
    means = harmless_means(lm, harmless, positions, last, template)
    n_heads = lm.n_heads
    change = torch.zeros(lm.n_layers, n_heads)
    embed = lm.model.get_input_embeddings()
    for prompt in harmful:
        input_ids = encode(lm, [prompt], template)["input_ids"]
        seen: list[torch.Tensor] = []

        def keep(module, args, seen=seen) -> None:
            seen.append(args[0])

        # The graph starts at the embeddings, so each head's input keeps every path to the answer through the
        # later layers (a detached copy per layer would cut the paths through later heads).
        with torch.enable_grad(), hooked(lm, [(o_proj, "forward_pre", keep) for o_proj in _o_projs(lm)]):
            embeds = embed(input_ids).detach().requires_grad_(True)
            logits = lm.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[0, -1]
            logp = torch.log_softmax(logits.float(), -1)
            grads = torch.autograd.grad(logp[int(logp.argmax())], seen)
        window = slice(-last, None) if positions == "last" else slice(None)
        for layer, (z, grad, mean) in enumerate(zip(seen, grads, means, strict=True)):
            z, grad = z[0, window].detach().float(), grad[0, window].float()  # (t, n_heads * head_dim)
            t = z.shape[0]
            change[layer] += ((mean.to(z.device) - z) * grad).view(t, n_heads, -1).sum((0, 2)).cpu()
    return -change / len(harmful)  # a drop, like activation patching's
