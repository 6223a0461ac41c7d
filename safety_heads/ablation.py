"""Ablate attention heads with hooks on activations, never by editing (possibly 4-bit) weights.

Two ablations from the paper (Zhou et al., ICLR 2025, section 3):
- Undifferentiated Attention ("UA"): the head's query is scaled by a tiny eps, so q.k ~ 0 and softmax
  gives every visible key the same weight: row i of the attention matrix becomes 1/i.
  Hook point `layers.{l}.self_attn.q_proj` output, shape (B, T, n_heads * head_dim); a q bias is part
  of that output, so it is scaled too. Models with a per-head q_norm (Qwen3, Gemma 3) renormalise the
  query after q_proj, so there the hook point is `layers.{l}.self_attn.q_norm` output, (B, T, n_heads, head_dim).
- Scaling Contribution ("SC"): the head's output is scaled by eps before it is mixed into the residual
  stream. Hook point `layers.{l}.self_attn.o_proj` input, (B, T, n_heads * head_dim), one slice per
  query head, so grouped-query attention (several query heads per key/value head) is handled exactly.

Each batch row carries its own set of heads, so many different ablations run in one forward pass.
Heads are named "L-H" (layer-head, both from 0) everywhere, e.g. "18-8".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, cast

import torch
from torch import nn

from .models import LoadedModel

Head = tuple[int, int]  # (layer, head), both counted from 0
Mode = Literal["UA", "SC"]
MODES: tuple[Mode, ...] = ("UA", "SC")
# How `hooked` attaches a hook: after the module (may replace its output), before it (may replace its
# positional inputs), or before it with the keyword arguments too.
HookKind = Literal["forward", "forward_pre", "forward_pre_kwargs"]
DEFAULT_EPS = 1e-5
MAX_HEADS = 64  # more than any sane ablation; guards the app against "ablate everything" input
# The attribute that marks a hook function as this library's (see `hooked` and `count_hooks`).
OUR_HOOK = "safety_heads"

_HEAD_RE = re.compile(r"^\s*[Ll]?(\d+)\s*[-.:/Hh]\s*(\d+)\s*$")


def format_head(head: Head) -> str:
    return f"{head[0]}-{head[1]}"


def parse_heads(text: str | Iterable[str], n_layers: int, n_heads: int) -> list[Head]:
    """Parse "18-8, 7-2" (also "L18H8", "18.8") into sorted, de-duplicated (layer, head) pairs.

    Raises ValueError naming the first bad entry; nothing is returned half-parsed.
    """
    items = re.split(r"[,;\s]+", text) if isinstance(text, str) else list(text)
    heads: set[Head] = set()
    for item in items:
        if not item.strip():
            continue
        match = _HEAD_RE.match(item)
        if not match:
            raise ValueError(f"Cannot read head {item.strip()!r}: write heads as layer-head, e.g. 18-8")
        layer, head = int(match[1]), int(match[2])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"Head {layer}-{head} is outside the model: layers 0-{n_layers - 1}, heads 0-{n_heads - 1}"
            )
        heads.add((layer, head))
    if len(heads) > MAX_HEADS:
        raise ValueError(f"{len(heads)} heads given; at most {MAX_HEADS} can be ablated at once")
    return sorted(heads)


def check_eps(eps: float) -> float:
    if not (0.0 < eps <= 1.0):
        raise ValueError(f"eps must lie in (0, 1]; got {eps}")
    return float(eps)


def hook_point(lm: LoadedModel, layer: int, mode: Mode) -> tuple[str, nn.Module]:
    """The named module whose activation the ablation scales (see the module docstring)."""
    attn = lm.layers[layer].self_attn
    if mode == "UA":
        name = "q_norm" if getattr(attn, "q_norm", None) is not None else "q_proj"
    elif mode == "SC":
        name = "o_proj"
    else:
        raise ValueError(f"Unknown mode {mode!r}; choose UA or SC")
    return f"layers.{layer}.self_attn.{name}", getattr(attn, name)


def head_scales(
    head_sets: Sequence[Iterable[Head]], n_layers: int, n_heads: int, eps: float
) -> dict[int, torch.Tensor]:
    """Per layer that any row ablates: a (B, n_heads) tensor of 1s with eps where row b ablates a head."""
    scales: dict[int, torch.Tensor] = {}
    for row, heads in enumerate(head_sets):
        for layer, head in heads:
            assert 0 <= layer < n_layers and 0 <= head < n_heads, (layer, head)
            if layer not in scales:
                scales[layer] = torch.ones(len(head_sets), n_heads)
            scales[layer][row, head] = eps
    return scales


def scale_heads(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply each head's slice of x by scale[b, h].

    x: (B, T, n_heads * head_dim) or (B, T, n_heads, head_dim); scale: (B, n_heads) or (1, n_heads).
    """
    B, n_heads = scale.shape
    assert x.shape[0] == B or B == 1, f"batch of {x.shape[0]} rows, head sets for {B}"
    scale = scale.to(device=x.device, dtype=x.dtype)
    if x.dim() == 4:
        return x * scale[:, None, :, None]
    flat = x.view(*x.shape[:-1], n_heads, -1)  # (B, T, nh, hd)
    return (flat * scale[:, None, :, None]).view(x.shape)


def make_output_hook(scale: torch.Tensor) -> Callable:
    """A forward hook that scales the module's output per head (UA on q_proj or q_norm)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return scale_heads(output, scale)

    return hook


def make_input_hook(scale: torch.Tensor) -> Callable:
    """A forward pre-hook that scales the module's input per head (SC on o_proj)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (scale_heads(args[0], scale), *args[1:])

    return hook


def count_hooks(lm: LoadedModel) -> int:
    """This library's hooks attached anywhere in the model; zero whenever no context is open.

    Only hooks marked as ours (by `hooked`) count: transformers attaches hooks of its own (to capture outputs).
    """
    return sum(
        getattr(hook, OUR_HOOK, False)
        for module in lm.model.modules()
        for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
    )


@contextmanager
def hooked(lm: LoadedModel, hooks: Iterable[tuple[nn.Module, HookKind, Callable]]) -> Iterator[LoadedModel]:
    """Attach `hooks` (module, kind, function) for the block, then remove every one, also on errors.

    The one place this library attaches hooks. They live on modules that every request shares, so the
    model's lock is held for the whole block: concurrent callers queue rather than see each other's hooks.
    The lock is re-entrant, so contexts nest within one thread.
    """
    with lm.lock:
        handles = []
        try:
            for module, kind, fn in hooks:
                # Marked as ours, so that count_hooks tells them from transformers' own hooks.
                setattr(fn, OUR_HOOK, True)
                if kind == "forward":
                    handles.append(module.register_forward_hook(fn))
                else:
                    handles.append(module.register_forward_pre_hook(fn, with_kwargs=kind == "forward_pre_kwargs"))
            yield lm
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def ablate(
    lm: LoadedModel,
    heads: Iterable[Head] | Sequence[Iterable[Head]] = (),
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    *,
    per_row: bool = False,
) -> Iterator[LoadedModel]:
    """Ablate `heads` in every forward pass inside the block, then remove every hook, also on errors.

    With per_row=True, `heads` is a sequence of head sets, one per batch row (an empty set leaves that
    row intact). The model's lock is held for the whole block (see `hooked`), so concurrent callers queue
    rather than see each other's ablations.
    """
    eps = check_eps(eps)
    # per_row says which of its two shapes `heads` has.
    if per_row:
        head_sets = [list(h) for h in cast(Sequence[Iterable[Head]], heads)]
    else:
        head_sets = [list(cast(Iterable[Head], heads))]
    for head_set in head_sets:
        for layer, head in head_set:
            if not (0 <= layer < lm.n_layers and 0 <= head < lm.n_heads):
                raise ValueError(f"Head {layer}-{head} is outside the model ({lm.n_layers} layers, {lm.n_heads} heads)")
    hooks: list[tuple[nn.Module, HookKind, Callable]] = []
    for layer, scale in head_scales(head_sets, lm.n_layers, lm.n_heads, eps).items():
        _, module = hook_point(lm, layer, mode)
        if mode == "UA":
            hooks.append((module, "forward", make_output_hook(scale)))
        else:
            hooks.append((module, "forward_pre", make_input_hook(scale)))
    with hooked(lm, hooks):
        yield lm
