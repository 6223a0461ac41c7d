"""The refusal direction (Arditi et al., 2024) and the heads that write along it.

Refusal is carried by one direction of the residual stream: the mean residual at the last prompt token over
harmful prompts minus its mean over harmless ones. It is found entering every layer, and the layer where it
separates the two sets best (the gap between the projections' means, in pooled standard deviations) is kept.

A head's score is its direct attribution: its own output at the last prompt token (its slice of the output
projection's input, sent through the output projection alone) projected on the unit direction, averaged over
the harmful prompts. A head that writes the refusal direction scores high, whatever its layer: one that
writes after the chosen layer still pushes the stream along it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .ablation import hook_point, hooked
from .models import LoadedModel, Template, encode


@dataclass
class RefusalDirection:
    layer: int  # the residual stream entering this decoder layer
    vector: torch.Tensor  # (d,), unit length
    separation: list[float]  # per layer: (mean harmful - mean harmless projection) / pooled std


@torch.no_grad()
def last_token_residuals(lm: LoadedModel, prompts: Sequence[str], template: Template = "chat", batch_size: int = 8):
    """(N, n_layers, d): the residual stream entering each decoder layer at the last prompt token."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = encode(lm, list(prompts[start : start + batch_size]), template)  # left-padded
        with lm.lock:
            hidden = lm.model(**batch, output_hidden_states=True, use_cache=False).hidden_states
        # hidden_states[i] enters layer i; the last one has the final norm applied and is left out.
        out.append(torch.stack([h[:, -1].float().cpu() for h in hidden[: lm.n_layers]], dim=1))  # (B, L, d)
    return torch.cat(out)


def find_direction(harmful: torch.Tensor, harmless: torch.Tensor) -> RefusalDirection:
    """The difference of means of (N, L, d) residuals, at the layer (from 1: layer 0's input is the token
    embedding alone) where the two sets' projections on it lie furthest apart."""
    diff = harmful.mean(0) - harmless.mean(0)  # (L, d)
    unit = diff / diff.norm(dim=-1, keepdim=True)
    on_harmful = torch.einsum("nld,ld->nl", harmful, unit)  # (N_h, L)
    on_harmless = torch.einsum("nld,ld->nl", harmless, unit)
    pooled = ((on_harmful.var(0) + on_harmless.var(0)) / 2).sqrt()
    separation = (on_harmful.mean(0) - on_harmless.mean(0)) / pooled  # (L,)
    layer = 1 + int(separation[1:].argmax())
    return RefusalDirection(layer, unit[layer], separation.tolist())


@torch.no_grad()
def head_writes(
    lm: LoadedModel, prompts: Sequence[str], direction: torch.Tensor, template: Template = "chat", batch_size: int = 8
) -> torch.Tensor:
    """(N, n_layers, n_heads): how far each head's own output at the last prompt token points along
    `direction` (d,)."""
    n_heads, head_dim = lm.n_heads, lm.head_dim
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = encode(lm, list(prompts[start : start + batch_size]), template)
        heads_in: list[torch.Tensor] = []  # per layer: (B, n_heads * head_dim), the output projection's input

        def keep(module, args, heads_in=heads_in) -> None:
            heads_in.append(args[0][:, -1].detach())

        # The output projection's input is where SC acts: one slice per query head.
        o_projs = [hook_point(lm, layer, "SC")[1] for layer in range(lm.n_layers)]
        with hooked(lm, [(o_proj, "forward_pre", keep) for o_proj in o_projs]):
            lm.model(**batch, use_cache=False)
        rows = []
        for o_proj, z in zip(o_projs, heads_in, strict=True):
            B = z.shape[0]
            # Each head's slice alone, the others zeroed: (B * n_heads, n_heads * head_dim).
            alone = torch.zeros(B, n_heads, n_heads, head_dim, dtype=z.dtype, device=z.device)
            index = torch.arange(n_heads)
            alone[:, index, index] = z.view(B, n_heads, head_dim)
            written = o_proj(alone.view(B * n_heads, -1)) - o_proj(torch.zeros_like(z[:1]))  # bias out
            rows.append(written.float().cpu().view(B, n_heads, -1) @ direction)  # (B, n_heads)
        out.append(torch.stack(rows, dim=1))  # (B, L, H)
    return torch.cat(out)


def direction_scores(
    lm: LoadedModel, harmful: Sequence[str], harmless: Sequence[str], template: Template = "chat"
) -> tuple[torch.Tensor, RefusalDirection]:
    """(n_layers, n_heads): each head's mean write along the refusal direction on the harmful prompts."""
    residuals = [last_token_residuals(lm, prompts, template) for prompts in (harmful, harmless)]
    direction = find_direction(*residuals)
    return head_writes(lm, harmful, direction.vector, template).mean(0), direction
