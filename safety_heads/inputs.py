"""What a visitor types, checked before any model work: the prompt, number fields and head lists."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import Literal, overload

from .ablation import Head, format_head, parse_heads
from .models import LoadedModel

# Longer prompts are refused before tokenization: a public Space must not spend its CPU on a pasted book.
MAX_PROMPT_CHARS = 4000
# A head list typed before the model is loaded is only checked for its form; the model checks the range.
_NO_RANGE = 10**6


def check_prompt(prompt: object) -> str:
    """The prompt if the app should answer it; a ValueError that says why otherwise (cheap: no tokenizer)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("The prompt is empty: type a question first")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted")
    for i, char in enumerate(prompt):
        # Tab and newlines are text; other control characters (NUL, escape codes) and lone surrogates are not,
        # and a surrogate would also break the tokenizer and the UTF-8 run record.
        if unicodedata.category(char) in ("Cc", "Cs") and char not in "\t\n\r":
            raise ValueError(f"The prompt contains a control character (U+{ord(char):04X} at position {i}); remove it")
    return prompt


@overload
def to_number(value: object, name: str, integer: Literal[True]) -> int: ...


@overload
def to_number(value: object, name: str, integer: Literal[False] = False) -> float: ...


def to_number(value: object, name: str, integer: bool = False) -> float | int:
    """A widget's number as float (or int); an emptied field, text, NaN or infinity is refused by name."""
    try:
        number = float(value)  # type: ignore[arg-type]  # any widget value: the TypeError is the check
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return int(number) if integer else number


def selected_heads(checked: Sequence[str], typed: str, lm: LoadedModel | None = None) -> list[Head]:
    """The ticked heads plus the typed ones ("18-8, 7-2"), checked against the model's shape when loaded."""
    items = [*checked, *typed.replace(";", ",").replace(",", " ").split()]
    n_layers, n_heads = (lm.n_layers, lm.n_heads) if lm is not None else (_NO_RANGE, _NO_RANGE)
    return parse_heads(items, n_layers, n_heads)


def heads_text(heads: Sequence[Head]) -> str:
    return ", ".join(map(format_head, heads))
