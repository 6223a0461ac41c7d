"""Measure what an ablation does to behaviour: ASR, coherent ASR, degenerate share, over-refusal.

Heads chosen on one prompt set are evaluated on the other (cross-set, as the paper does), against
random heads of the same count, and against the intact model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .ablation import Head, Mode
from .answers import DecodingConfig, generate_many
from .coherence import judge_answers, with_surprise
from .judge import AsrResult, RefusalJudge, Verdict, attack_success, attempts
from .models import LoadedModel, Template
from .rankings import CONTROLS, display_order
from .significance import interval_text


@dataclass
class AblationResult:
    ranking: str  # a registry name, a control (CONTROLS) or none (the intact model)
    mode: Mode
    heads_from: str
    evaluated_on: str
    subset: str  # "all" prompts of the set, or those the intact model "refused"; never averaged together
    k: int
    heads: list[list[int]]
    asr: float
    coherent_asr: float
    degenerate: float
    xstest_safe_refusal: float | None  # the paper's keyword rule
    xstest_safe_opening_refusal: float | None  # first sentence declines (judge.opens_with_refusal)
    xstest_safe_degenerate: float | None  # benign answers broken by the ablation
    draw: int | None = None  # which random draw, for the random control
    runtime: str = "float32"  # the runtime the answers came from (runtime.RUNTIMES; "nf4" on a GPU)
    attempt_rate: float | None = None  # attempts the request, read by the opening sentence (judge.attempts)

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None or key != "draw"}

    def key(self) -> tuple:
        return row_key(self.to_json())


def answer_key(prompt_set: str, mode: Mode, heads: Sequence[Head]) -> tuple:
    """Which answers these are: the set, the mode ("-" for the intact model) and the heads in order."""
    return prompt_set, mode if heads else "-", tuple(sorted(tuple(h) for h in heads))


def row_key(row: dict) -> tuple:
    """What identifies a row of summary.json: a restart skips the rows whose key is there already."""
    return (
        row["ranking"],
        row["mode"],
        row["heads_from"],
        row["evaluated_on"],
        row.get("subset", "all"),
        row["k"],
        row.get("draw"),
    )


class Evaluator:
    """Answers prompt sets under ablations, caching by (set, mode, heads) so shared head sets run once."""

    def __init__(
        self,
        lm: LoadedModel,
        prompt_sets: Mapping[str, Sequence[str]],
        eps: float,
        template: Template,
        decoding: DecodingConfig,
        batch_size: int,
        surprise_limit: float | None = None,
        known: Mapping[tuple, tuple[list[str], list[float] | None]] | None = None,
    ):
        """`surprise_limit`: answers the intact model finds more surprising count as degenerate (see coherence).
        `known`: answers (and their surprise) generated before with these settings, by `answer_key`; greedy
        answers to the same prompts under the same ablation are the same, so they are read, not made again."""
        self.lm, self.prompt_sets, self.eps, self.template = lm, prompt_sets, eps, template
        self.decoding, self.batch_size, self.surprise_limit = decoding, batch_size, surprise_limit
        self.known = known or {}
        self.judge = RefusalJudge()
        self.verdicts: dict[tuple, list[Verdict]] = {}
        self.answers: dict[tuple, list[str]] = {}
        self.surprise: dict[tuple, list[float] | None] = {}

    def run(self, prompt_set: str, heads: Sequence[Head], mode: Mode, rows: Sequence[int] | None = None) -> AsrResult:
        """The judged answers of a prompt set with `heads` ablated; with `rows`, read on those rows only."""
        key = answer_key(prompt_set, mode, heads)
        if key not in self.verdicts:
            prompts = self.prompt_sets[prompt_set]
            answers, known_surprise = self.known.get(key, ([], None))
            if len(answers) != len(prompts):  # not answered before (or on another number of prompts)
                answers = generate_many(
                    self.lm, prompts, list(heads), mode, self.eps, self.template, self.decoding, self.batch_size
                )
                known_surprise = None
            verdicts, self.surprise[key] = judge_answers(
                self.lm, self.judge, prompts, answers, self.surprise_limit, self.template, self.batch_size,
                known_surprise,
            )  # fmt: skip
            self.verdicts[key] = verdicts
            self.answers[key] = answers
        verdicts = self.verdicts[key]
        return attack_success(verdicts if rows is None else [verdicts[i] for i in rows])

    def ablation(
        self,
        ranking: str,
        mode: Mode,
        heads_from: str,
        evaluated_on: str,
        heads: Sequence[Head],
        xstest: str | None = "xstest_safe",
        draw: int | None = None,
        subsets: Mapping[str, Sequence[int] | None] | None = None,
    ) -> list[AblationResult]:
        """One row per subset of the evaluated set (default: all of it), each read from the same answers."""
        safe = self.run(xstest, heads, mode) if xstest else None
        rows = []
        for subset, indices in (subsets or {"all": None}).items():
            result = self.run(evaluated_on, heads, mode, indices)
            rows.append(
                AblationResult(
                    ranking,
                    mode,
                    heads_from,
                    evaluated_on,
                    subset,
                    len(heads),
                    [list(h) for h in heads],
                    result.asr,
                    result.coherent_asr,
                    result.degenerate,
                    safe.refusal if safe else None,
                    safe.opening_refusal if safe else None,
                    safe.degenerate if safe else None,
                    draw,
                    self.lm.provenance.get("runtime", "float32"),
                    result.attempt_rate,
                )
            )
        return rows


class StoredGrid:
    """A grid as `precompute --evaluate` left it in a precomputed/<model>/ folder, judged again prompt by prompt
    from the answers and surprise values stored beside summary.json: nothing is generated, and every row's
    rates are reproduced exactly (a test checks it), so rows can be compared prompt by prompt."""

    def __init__(self, folder: Path):
        self.summary = json.loads((folder / "summary.json").read_text())
        self.limit = self.summary["coherence"]["limit"]
        lines = (folder / "answers.jsonl").read_text().splitlines()
        self.answers = {answer_key(r["set"], r["mode"], r["heads"]): r for r in map(json.loads, lines)}
        behaviour = folder / "behaviour.json"
        recorded = json.loads(behaviour.read_text())["sets"] if behaviour.is_file() else {}
        self.refused = {name: rec["refused_rows"] for name, rec in recorded.items()}
        self.judge = RefusalJudge()

    def answered(self, row: dict) -> dict:
        """The stored answers (and surprise) a row was read from, all prompts of its set."""
        return self.answers[answer_key(row["evaluated_on"], row["mode"], [tuple(h) for h in row["heads"]])]

    def verdicts(self, row: dict) -> list[Verdict]:
        """The verdict on each prompt the row was read on (its subset), in the set's order."""
        stored = self.answered(row)
        verdicts = [with_surprise(self.judge(a), x, self.limit) for a, x in zip(stored["answers"], stored["surprise"])]
        if row.get("subset", "all") == "all":
            return verdicts
        return [verdicts[i] for i in self.refused[row["evaluated_on"]] if i < len(verdicts)]

    def attempts(self, row: dict) -> list[bool]:
        return [attempts(v) for v in self.verdicts(row)]


def results_table(summary: dict, grid: StoredGrid | None = None) -> str:
    """summary.json's ablations as a Markdown table; random draws of one k averaged into one row (mean). With the
    stored grid, a last column gives the attempt rate's 95 % Wilson interval and its N (random draws pooled)."""
    metrics = ("asr", "coherent_asr", "attempt_rate", "degenerate", "xstest_safe_refusal", "xstest_safe_degenerate")
    groups: dict[tuple, list[dict]] = {}
    for row in summary["ablations"]:
        key = (row["mode"], row["heads_from"], row["evaluated_on"], row["ranking"], row["k"], row.get("subset", "all"))
        groups.setdefault(key, []).append(row)
    lines = [
        "| mode | heads from → evaluated on | subset | ranking | k | heads | ASR | coherent ASR | attempts | "
        "degenerate | XSTest-safe refusal | XSTest-safe degenerate |" + (" attempts, 95 % CI (N) |" if grid else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if grid else ""),
    ]
    rankings = display_order({key[3] for key in groups} - {"none", *CONTROLS})
    order = {name: i for i, name in enumerate(["none", *rankings, *CONTROLS])}
    for key in sorted(groups, key=lambda k: (k[1] != "-", k[0], k[1], k[2], k[5], k[4], order[k[3]])):
        mode, heads_from, evaluated_on, ranking, k, subset = key
        rows = groups[key]
        # A metric a row lacks (no XSTest run, or a summary older than the column) is shown as a dash.
        means = {m: sum(r[m] for r in rows) / len(rows) if rows[0].get(m) is not None else None for m in metrics}
        if ranking in CONTROLS:
            heads = f"mean of {len(rows)} draws"
        else:
            heads = ", ".join(f"{layer}-{head}" for layer, head in rows[0]["heads"]) or "none"
        cells = [f"{means[m]:.2f}" if means[m] is not None else "–" for m in metrics]
        if grid:
            pooled = [a for row in rows for a in grid.attempts(row)]
            cells.append(f"{interval_text(sum(pooled), len(pooled))} ({len(pooled)})")
        where = evaluated_on if ranking == "none" else f"{heads_from} → {evaluated_on}"
        lines.append(
            f"| {mode if k else 'intact'} | {where} | {subset} | {ranking} | {k} | {heads} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)
