"""Sahara: greedy search for the group of heads whose joint ablation moves the safety subspace most.

Step 1 is generalized Ships; each later step adds the head that, ablated together with the group so far,
gives the largest subspace angle (paper, section 4; the authors' code ablates the query, i.e. UA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ablation import DEFAULT_EPS, Head, Mode
from .models import LoadedModel
from .ships import ActivationSet, Progress, all_heads, subspace_shifts

MAX_GROUP = 5


@dataclass
class SaharaStep:
    head: Head
    angle: float  # degrees, of the group up to and including this head


def sahara(
    lm: LoadedModel,
    acts: ActivationSet,
    size: int = 3,
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    rank: int = 1,
    batch_size: int = 64,
    progress: Progress | None = None,
    first: torch.Tensor | None = None,
) -> list[SaharaStep]:
    """The greedy group of `size` heads (at most 5), with the angle after each addition.

    `first`, generalized Ships already computed for these prompts, saves the first step's sweep.
    """
    if not 1 <= size <= MAX_GROUP:
        raise ValueError(f"Sahara group size must be 1-{MAX_GROUP}; got {size}")
    group: list[Head] = []
    steps: list[SaharaStep] = []
    if first is not None:
        best = int(first.flatten().argmax())
        group.append((best // lm.n_heads, best % lm.n_heads))
        steps.append(SaharaStep(group[0], float(first.flatten()[best])))
    for step in range(len(group), size):
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
