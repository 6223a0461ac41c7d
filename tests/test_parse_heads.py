"""The head parser, fuzzed: it raises ValueError or returns in-range, sorted, distinct heads."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safety_heads.ablation import MAX_HEADS, format_head, parse_heads

HEAD_CHARS = st.text(alphabet="0123456789-.:/LlHh,; \t\n x٣", max_size=40)


def check_parsed(parsed, n_layers: int, n_heads: int) -> None:
    assert parsed == sorted(set(parsed)) and len(parsed) <= MAX_HEADS
    assert all(0 <= layer < n_layers and 0 <= head < n_heads for layer, head in parsed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(st.text(max_size=60), HEAD_CHARS, st.lists(st.one_of(st.text(max_size=12), HEAD_CHARS), max_size=6)),
    n_layers=st.integers(1, 80),
    n_heads=st.integers(1, 64),
)
def test_parse_heads_raises_only_value_errors(text, n_layers, n_heads):
    try:
        parsed = parse_heads(text, n_layers, n_heads)
    except ValueError:
        return
    check_parsed(parsed, n_layers, n_heads)


@st.composite
def head_lists(draw):
    n_layers, n_heads = draw(st.integers(1, 80)), draw(st.integers(1, 64))
    head = st.tuples(st.integers(0, n_layers - 1), st.integers(0, n_heads - 1))
    heads = draw(st.lists(head, max_size=MAX_HEADS))
    return n_layers, n_heads, heads


@settings(max_examples=200, deadline=None)
@given(
    case=head_lists(),
    style=st.sampled_from(["{}-{}", "L{}H{}", "{}.{}", "l{}h{}", "{}:{}", "{}/{}"]),
    separator=st.sampled_from([", ", ",", ";", " ", "\n", " ,; "]),
)
def test_valid_heads_round_trip(case, style, separator):
    n_layers, n_heads, heads = case
    if len(set(heads)) > MAX_HEADS:
        return
    text = separator.join(style.format(*h) for h in heads)
    parsed = parse_heads(text, n_layers, n_heads)
    assert parsed == sorted(set(heads))
    assert parse_heads(", ".join(map(format_head, parsed)), n_layers, n_heads) == parsed
    assert parse_heads([format_head(h) for h in heads], n_layers, n_heads) == parsed


@pytest.mark.parametrize(
    "text",
    ["1-1" + " " * 100_000 + "x", "1" * 5_000 + "-1", "-" * 100_000, "1-" * 50_000, ["1-1" + "\t" * 100_000 + "-"]],
    ids=["trailing-spaces", "huge-number", "dashes", "repeats", "tabs-in-item"],
)
def test_parse_heads_refuses_pathological_input(text):
    with pytest.raises(ValueError):
        parse_heads(text, 30, 9)
