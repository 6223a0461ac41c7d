"""Intervals and paired tests for grid cells, and the stored grid they read: checked against scipy's own
binomial routines and against every row of the shipped summaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import binomtest

from safety_heads.evaluation import StoredGrid, results_table
from safety_heads.judge import RefusalJudge, attack_success
from safety_heads.precomputed import PRECOMPUTED_DIR
from safety_heads.set_evaluation import SUMMARY_HEADERS, SetEvaluation
from safety_heads.significance import holm, mcnemar, wilson

GRIDS = sorted(
    path.parent for path in PRECOMPUTED_DIR.glob("*/summary.json") if (path.parent / "answers.jsonl").is_file()
)


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (43, 75), (0, 163), (1, 1)])
def test_wilson_is_scipys_wilson_interval(successes, n):
    expected = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(successes, n) == pytest.approx((expected.low, expected.high), abs=2e-4)


@pytest.mark.parametrize(("only_a", "only_b"), [(0, 0), (0, 6), (3, 3), (1, 7), (12, 3), (0, 44), (20, 13)])
def test_mcnemar_is_the_exact_two_sided_binomial_test_on_the_disagreements(only_a, only_b):
    expected = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert mcnemar(only_a, only_b) == pytest.approx(expected, rel=1e-9)
    assert mcnemar(only_a, only_b) == mcnemar(only_b, only_a)


def test_holm_multiplies_by_the_tests_left_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


@pytest.mark.parametrize("folder", GRIDS, ids=lambda p: p.name)
def test_the_stored_grid_reproduces_every_row_of_the_shipped_summary(folder: Path):
    """Judged again from the stored answers, each row's ASR, coherent ASR and attempt rate come back exactly:
    the paired tests and intervals read the very verdicts the tables report."""
    grid = StoredGrid(folder)
    for row in grid.summary["ablations"]:
        result = attack_success(grid.verdicts(row))
        assert (result.asr, result.coherent_asr) == pytest.approx((row["asr"], row["coherent_asr"]), abs=1e-9), row
        if "attempt_rate" in row:  # SmolLM2's grids predate the column
            assert result.attempt_rate == pytest.approx(row["attempt_rate"], abs=1e-9), row


def test_the_report_gives_each_rows_interval_and_n():
    folder = PRECOMPUTED_DIR / "qwen2.5-coder-0.5b-instruct"
    grid = StoredGrid(folder)
    lines = results_table(grid.summary, grid).splitlines()
    assert lines[0].endswith("attempts, 95 % CI (N) |")
    intact_refused = next(line for line in lines if line.startswith("| intact | maliciousinstruct | refused |"))
    assert intact_refused.endswith("| 0.00–0.05 (75) |")  # none of 75 refusals attempted: Wilson's upper 0.049
    random_rows = next(
        line for line in lines if "| jailbreakbench → maliciousinstruct | refused | random | 3 |" in line
    )
    assert random_rows.endswith("(225) |")  # three draws of 75, pooled


def test_the_apps_set_evaluation_gives_intervals_and_paired_p_values():
    refusal, answer = "I'm sorry, but I can't help with that.", "Step one: gather the parts and lay them out in order."
    judge = RefusalJudge()
    texts = {"intact": [refusal] * 8, "ablated": [answer] * 6 + [refusal] * 2, "random": [refusal] * 7 + [answer]}
    verdicts = {run: [judge(t) for t in answers] for run, answers in texts.items()}
    heads = {"intact": [], "ablated": [(3, 1)], "random": [(5, 2)]}
    result = SetEvaluation(
        "jailbreakbench", ["p"] * 8, heads, texts, verdicts, {r: attack_success(v) for r, v in verdicts.items()}
    )
    rows = {row[0]: dict(zip(SUMMARY_HEADERS, row, strict=True)) for row in result.summary_rows()}
    assert rows["ablated"]["attempts"] == 0.75 and rows["ablated"]["attempts, 95 % CI"] == "0.41–0.93"
    assert rows["ablated"]["p vs intact"] == f"{2 / 2**6:.3f}"  # six prompts flip, none the other way
    assert rows["ablated"]["p vs random"] == f"{mcnemar(6, 1):.3f}"
    assert rows["intact"]["p vs intact"] == rows["random"]["p vs random"] == "–"
    assert rows["random"]["p vs intact"] == "1.000"
