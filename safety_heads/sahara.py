"""Sahara: greedy search for the group of heads whose joint ablation moves the safety subspace most.

Step 1 is generalized Ships; each later step adds the head that, ablated together with the group so far,
gives the largest subspace angle (paper, section 4; the authors' code ablates the query, i.e. UA).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ablation import DEFAULT_EPS, Head, Mode
from .ships import ActivationSet, Progress, all_heads, subspace_shifts

MAX_GROUP = 5


@dataclass
class SaharaStep:
    head: Head
    angle: float  # degrees, of the group up to and including this head


def sahara(
    lm,
    acts: ActivationSet,
    size: int = 3,
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    rank: int = 1,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[SaharaStep]:
    """The greedy group of `size` heads (at most 5), with the angle after each addition."""
    if not 1 <= size <= MAX_GROUP:
        raise ValueError(f"Sahara group size must be 1-{MAX_GROUP}; got {size}")
    group: list[Head] = []
    steps: list[SaharaStep] = []
    for step in range(size):
        candidates = [h for h in all_heads(lm) if h not in group]

        def step_progress(done: int, total: int, step: int = step) -> None:
            if progress:
                progress(step * total + done, size * total)

        angles = subspace_shifts(
            lm, acts, [[*group, h] for h in candidates], mode, eps, rank, batch_size, step_progress
        )
        best = max(range(len(candidates)), key=angles.__getitem__)
        group.append(candidates[best])
        steps.append(SaharaStep(candidates[best], angles[best]))
    return steps
