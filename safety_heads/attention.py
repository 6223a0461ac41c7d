"""One head's attention pattern on a prompt, intact and ablated, for the app's attention view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ablation import Head, Mode, ablate, check_eps, format_head, parse_heads
from .models import LoadedModel, Template, decode, encode

MAX_ATTENTION_TOKENS = 128


@dataclass
class AttentionPattern:
    tokens: list[str]  # the last T tokens of the formatted prompt, decoded one by one
    intact: np.ndarray  # (T, T), rows are queries
    ablated: np.ndarray  # (T, T)
    cropped: int  # how many leading tokens were left out


@torch.no_grad()
def attention_pattern(
    lm: LoadedModel,
    prompt: str,
    head: Head,
    mode: Mode,
    eps: float,
    template: Template = "chat",
    max_tokens: int = MAX_ATTENTION_TOKENS,
) -> AttentionPattern:
    """One head's attention weights on the prompt, intact and with `head` ablated (from eager attention).

    Under UA the head's own pattern turns uniform over the visible keys; under SC its pattern is unchanged
    (SC scales what the head writes, not where it looks).
    """
    layer, h = parse_heads([format_head(head)], lm.n_layers, lm.n_heads)[0]
    check_eps(eps)
    batch = encode(lm, [prompt], template)
    with lm.lock:
        intact = lm.model(**batch, output_attentions=True, use_cache=False).attentions[layer]  # (1, nh, T, T)
    with ablate(lm, [(layer, h)], mode, eps):
        ablated = lm.model(**batch, output_attentions=True, use_cache=False).attentions[layer]
    ids = batch["input_ids"][0].tolist()
    start = max(0, len(ids) - max_tokens)
    tokens = [decode(lm.tokenizer, [t]) for t in ids[start:]]
    crop = slice(start, None)
    return AttentionPattern(
        tokens,
        intact[0, h, crop, crop].float().cpu().numpy(),
        ablated[0, h, crop, crop].float().cpu().numpy(),
        start,
    )
