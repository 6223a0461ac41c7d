"""Evaluate on a set: ASR intact, with the chosen heads ablated, and with as many random heads (the control)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .ablation import Head, Mode, check_eps
from .answers import DecodingConfig, generate_many
from .attribution import random_heads
from .coherence import judge_answers
from .datasets import HARMFUL_SETS, KNOWN_SETS, datasets_dir, load_prompts
from .inputs import heads_text
from .judge import AsrResult, RefusalJudge, Verdict, attack_success, attempts
from .models import LoadedModel, Template
from .significance import interval_text, paired

MAX_EVAL_PROMPTS = 50

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class SetEvaluation:
    prompt_set: str
    prompts: list[str]
    heads: dict[str, list[Head]]  # run ("intact", "ablated", "random") -> heads ablated
    answers: dict[str, list[str]]
    verdicts: dict[str, list[Verdict]]
    results: dict[str, AsrResult]

    def summary_rows(self) -> list[list]:
        """One row per run: its rates, its attempt rate's 95 % interval, and McNemar's exact p that its attempts
        differ from the intact model's and (the chosen heads) from the random heads', prompt by prompt."""
        attempted = {run: [attempts(v) for v in verdicts] for run, verdicts in self.verdicts.items()}

        def versus(run: str, other: str) -> str:
            return f"{paired(attempted[run], attempted[other])[2]:.3f}" if run != other else "–"

        rows = []
        for run, r in self.results.items():
            rows.append([
                run, heads_text(self.heads[run]) or "none", r.n, r.asr, r.coherent_asr, r.attempt_rate,
                interval_text(sum(attempted[run]), r.n), versus(run, "intact"),
                versus(run, "random") if run == "ablated" else "–",
                r.refusal, r.degenerate,
            ])  # fmt: skip
        return rows

    def answer_rows(self) -> list[list[str]]:
        runs = list(self.answers)
        return [
            [prompt, *[x for run in runs for x in (self.answers[run][i], self.verdicts[run][i].label)]]
            for i, prompt in enumerate(self.prompts)
        ]


SUMMARY_HEADERS = [
    "run", "heads", "N", "ASR", "coherent ASR", "attempts", "attempts, 95 % CI", "p vs intact", "p vs random",
    "refusal", "degenerate",
]  # fmt: skip
ANSWER_HEADERS = ["prompt", "intact", "intact label", "ablated", "ablated label", "random", "random label"]


def set_prompts(prompt_set: str, n: int) -> list[str]:
    """The first n prompts of a known set, by name only; a clear message if the datasets are missing."""
    if prompt_set not in KNOWN_SETS:
        raise ValueError(f"Unknown prompt set {prompt_set!r}; choose one of {', '.join(KNOWN_SETS)}")
    if not 1 <= n <= MAX_EVAL_PROMPTS:
        raise ValueError(f"N must be 1-{MAX_EVAL_PROMPTS}; got {n}")
    if not datasets_dir().is_dir():
        raise FileNotFoundError(
            "The prompt sets are not installed on this server (no datasets folder; set SAFETY_HEADS_DATASETS)."
        )
    return load_prompts(prompt_set, n=n)


def evaluate_set(
    lm: LoadedModel,
    prompt_set: str,
    n: int,
    heads: Sequence[Head],
    mode: Mode,
    eps: float,
    decoding: DecodingConfig,
    judge: RefusalJudge,
    template: Template = "chat",
    progress: Progress | None = None,
    surprise_limit: float | None = None,
) -> SetEvaluation:
    """Answer N prompts intact, with `heads` ablated, and with as many random heads (seed: decoding.seed)."""
    if not heads:
        raise ValueError("Choose at least one head to ablate")
    check_eps(eps)
    prompts = set_prompts(prompt_set, n)
    runs = {
        "intact": [],
        "ablated": list(heads),
        "random": random_heads(lm, len(heads), decoding.seed, exclude=heads),
    }
    answers: dict[str, list[str]] = {}
    for i, (run, run_heads) in enumerate(runs.items()):

        def step(done: int, total: int, i=i, run=run) -> None:
            if progress:
                progress(i * total + done, 3 * total, f"{run} answers")

        step(0, len(prompts))
        answers[run] = generate_many(lm, prompts, run_heads, mode, eps, template, decoding, progress=step)
    verdicts = {
        run: judge_answers(lm, judge, prompts, texts, surprise_limit, template)[0] for run, texts in answers.items()
    }
    results = {run: attack_success(v) for run, v in verdicts.items()}
    return SetEvaluation(prompt_set, prompts, runs, answers, verdicts, results)


def evaluation_sets() -> list[str]:
    """Known set names, the harmful ones (whose ASR the paper reports) first."""
    return [*HARMFUL_SETS, *[s for s in KNOWN_SETS if s not in HARMFUL_SETS]]
