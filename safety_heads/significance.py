"""How sure a grid cell is: an interval for a rate over its N prompts, and a paired test between two cells.

Every cell of the grid answers the same prompts, so two cells are compared prompt by prompt: McNemar's exact
test reads only the prompts where they disagree, which is far more sensitive than comparing two rates as if
they came from different prompts. With N = 50–75 refused prompts a rate's 95 % interval is about ± 0.13
wide at 0.5, so many differences between methods in the README's tables are within chance; these say which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of successes / n (95 % at z = 1.96): unlike the normal approximation it stays
    inside [0, 1] and is not of zero width at 0 of n, where random heads' rows sit."""
    if n <= 0:
        raise ValueError("an interval needs at least one prompt")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_text(successes: int, n: int) -> str:
    """The 95 % Wilson interval as a table shows it: "0.41–0.93"."""
    low, high = wilson(successes, n)
    return f"{low:.2f}–{high:.2f}"


def mcnemar(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value that two paired rates differ, from the prompts where exactly one of the two
    succeeds (`only_a`, `only_b`): with no difference each such prompt goes either way with probability 1/2."""
    disagree = only_a + only_b
    if disagree == 0:
        return 1.0
    tail = sum(math.comb(disagree, i) for i in range(min(only_a, only_b) + 1)) / 2**disagree
    return min(1.0, 2 * tail)


def paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """(prompts where only a succeeds, where only b does, McNemar's p) for two runs over the same prompts."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    return only_a, only_b, mcnemar(only_a, only_b)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in the input's order: a family of tests read together keeps its chance of
    any false difference at the nominal level."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
