"""Measure what an ablation does to behaviour: ASR, coherent ASR, degenerate share, over-refusal.

Heads chosen on one prompt set are evaluated on the other (cross-set, as the paper does), against
random heads of the same count, and against the intact model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .ablation import Head, Mode
from .answers import DecodingConfig, generate_many
from .judge import RefusalJudge, attack_success
from .models import LoadedModel, Template


@dataclass
class AblationResult:
    ranking: str  # ships | generalized | refusal | sahara | random | none (intact)
    mode: Mode
    heads_from: str
    evaluated_on: str
    k: int
    heads: list[list[int]]
    asr: float
    coherent_asr: float
    degenerate: float
    xstest_safe_refusal: float | None
    draw: int | None = None  # which random draw, for the random control

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None or key != "draw"}


class Evaluator:
    """Answers prompt sets under ablations, caching by (set, mode, heads) so shared head sets run once."""

    def __init__(
        self,
        lm: LoadedModel,
        prompt_sets: dict[str, Sequence[str]],
        eps: float,
        template: Template,
        decoding: DecodingConfig,
        batch_size: int,
    ):
        self.lm, self.prompt_sets, self.eps, self.template = lm, prompt_sets, eps, template
        self.decoding, self.batch_size = decoding, batch_size
        self.judge = RefusalJudge()
        self._cache: dict[tuple, tuple] = {}
        self.answers: dict[tuple, list[str]] = {}

    def run(self, prompt_set: str, heads: Sequence[Head], mode: Mode):
        """(AsrResult, refusal share) of the set's answers with `heads` ablated."""
        key = (prompt_set, mode if heads else "-", tuple(sorted(heads)))
        if key not in self._cache:
            answers = generate_many(
                self.lm, self.prompt_sets[prompt_set], list(heads), mode, self.eps, self.template,
                self.decoding, self.batch_size,
            )  # fmt: skip
            result = attack_success(self.judge(a) for a in answers)
            self._cache[key] = (result, result.refusal)
            self.answers[key] = answers
        return self._cache[key]

    def ablation(
        self,
        ranking: str,
        mode: Mode,
        heads_from: str,
        evaluated_on: str,
        heads: Sequence[Head],
        xstest: str | None = "xstest_safe",
        draw: int | None = None,
    ) -> AblationResult:
        result, _ = self.run(evaluated_on, heads, mode)
        over_refusal = self.run(xstest, heads, mode)[1] if xstest else None
        return AblationResult(
            ranking, mode, heads_from, evaluated_on, len(heads), [list(h) for h in heads],
            result.asr, result.coherent_asr, result.degenerate, over_refusal, draw,
        )  # fmt: skip
