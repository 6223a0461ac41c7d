"""What the precomputed files offer the app, in-process: one file's head lists, the group searches as
rankings, the heads suggested by the measured grid, the paper's two figures, and the real files if present."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safety_heads import plots
from safety_heads.head_options import head_options, method_curves, suggestion
from safety_heads.precomputed import PRECOMPUTED_DIR, Precomputed, available, save
from safety_heads.rankings import GROUPS
from safety_heads.ui import figures_tab
from tests.test_app import FIXTURE_TOP, MODEL, N_HEADS, N_LAYERS, OTHER, fixture_scores, write_fixture


def test_head_options_from_a_file_and_without_one(tmp_path):
    write_fixture(tmp_path)
    opts = head_options(MODEL, "jailbreakbench", "UA", "ships", root=tmp_path)
    assert opts.rankings == ["generalized", "ships"] and opts.ranking == "ships"
    assert [h for h, _ in opts.top] == FIXTURE_TOP and opts.scores.shape == (N_LAYERS, N_HEADS)
    assert head_options(MODEL, "jailbreakbench", "UA", "nonsense", root=tmp_path).ranking == "generalized"
    missing = head_options(MODEL, "jailbreakbench", "SC", root=tmp_path)
    assert missing.pre is None and missing.top == [] and "not computed yet" in missing.note
    corrupt = tmp_path / "broken" / "jailbreakbench-UA.json"
    corrupt.parent.mkdir()
    corrupt.write_text("{not json")
    assert "could not be read" in head_options("broken", "jailbreakbench", "UA", root=tmp_path).note


def grid_row(ranking, heads_from, evaluated_on, heads, coherent_asr, subset="refused", mode="UA"):
    where = {"heads_from": heads_from, "evaluated_on": evaluated_on, "subset": subset}
    return {"ranking": ranking, "mode": mode, **where, "k": len(heads), "heads": heads, "coherent_asr": coherent_asr}


def test_suggested_heads_are_the_best_measured_cross_set_ablation(tmp_path):
    write_fixture(tmp_path)
    assert head_options(MODEL, "jailbreakbench", "UA", root=tmp_path).suggested == []
    jbb, mi = "jailbreakbench", "maliciousinstruct"
    rows = [
        grid_row("ships", jbb, mi, FIXTURE_TOP[3:6], 0.2),
        grid_row("ships", mi, jbb, FIXTURE_TOP[3:6], 0.3),
        grid_row("generalized", jbb, mi, FIXTURE_TOP[:3], 0.6),
        grid_row("generalized", mi, jbb, FIXTURE_TOP[:3], 0.5),
        grid_row("generalized", jbb, mi, FIXTURE_TOP[:3], 0.99, subset="all"),  # read on the refused subset only
        grid_row("ships", jbb, mi, FIXTURE_TOP[:5], 0.9),  # more than 3 heads: never suggested
        grid_row("refusal", jbb, mi, FIXTURE_TOP[6:9], 0.95),  # one direction only: ranked below both
        grid_row("refusal", mi, jbb, FIXTURE_TOP[6:9], 0.0),  # the other direction, at 0.475 on average...
        grid_row("refusal", jbb, "advbench", FIXTURE_TOP[6:9], 0.9),  # ...a held-out set does not raise it
        grid_row("random", jbb, mi, [(0, 0), (1, 1), (2, 2)], 0.1),
        grid_row("random", jbb, mi, [(0, 1), (1, 2), (2, 3)], 0.2),
        grid_row("random_outside", jbb, mi, [(0, 2), (1, 3), (2, 0)], 0.97),  # a control: never suggested
        grid_row("random_outside", mi, jbb, [(0, 2), (1, 3), (2, 0)], 0.97),
    ]
    (tmp_path / MODEL / "summary.json").write_text(json.dumps({"ablations": rows}))
    hint = suggestion(MODEL, tmp_path)
    assert (hint.prompt_set, hint.mode, hint.ranking, hint.heads) == (jbb, "UA", "generalized", FIXTURE_TOP[:3])
    assert "0.60" in hint.note and "3 random heads 0.15" in hint.note
    opts = head_options(MODEL, jbb, "UA", root=tmp_path)  # no ranking chosen yet: the suggested one
    assert opts.ranking == "generalized" and opts.suggested == FIXTURE_TOP[:3] and hint.note in opts.note
    assert head_options(MODEL, jbb, "UA", "ships", root=tmp_path).suggested == []
    assert head_options(MODEL, mi, "UA", root=tmp_path).suggested == []


def test_method_curves_draw_each_ranking_beside_the_papers_random_band():
    jbb, mi = "jailbreakbench", "maliciousinstruct"
    rows = [
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:1], 0.3),
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:3], 0.6),
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:3], 0.9, subset="all"),  # read on the refused prompts only
        grid_row("ships", jbb, mi, FIXTURE_TOP[:3], 0.1, mode="SC"),  # another mode
        grid_row("random", jbb, mi, [(0, 0), (1, 1), (2, 2)], 0.1),
        grid_row("random", jbb, mi, [(0, 1), (1, 2), (2, 3)], 0.2),
        grid_row("random_outside", jbb, mi, [(0, 2), (1, 3), (2, 0)], 0.05),  # a control, not a method's curve
        grid_row("none", "-", mi, [], 0.0),
    ]
    assert method_curves(rows, "UA", "coherent_asr") == {
        "JailbreakBench → MaliciousInstruct": ({"refusal": {1: 0.3, 3: 0.6}}, {3: [0.1, 0.2]})
    }


def test_a_group_search_is_offered_as_a_ranking_on_its_basis_scores(tmp_path):
    scores = {"refusal": fixture_scores(2)}
    top10 = {"refusal": [(layer, head, scores["refusal"][layer][head]) for layer, head in FIXTURE_TOP]}
    group = [(5, 1, 0.2), (4, 3, 0.5)]
    pre = Precomputed(MODEL, "jailbreakbench", "SC", N_LAYERS, N_HEADS, scores, top10, groups={"refusal_group": group})
    save(pre, tmp_path)
    opts = head_options(MODEL, "jailbreakbench", "SC", "refusal_group", root=tmp_path)
    assert opts.rankings == ["refusal", "refusal_group"]
    assert opts.top == [((5, 1), 0.2), ((4, 3), 0.5)] and "order the greedy search added them" in opts.note
    assert np.array_equal(opts.scores, np.asarray(scores["refusal"]))


def test_paper_figures_from_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_HEADS_PRECOMPUTED", str(tmp_path))
    write_fixture(tmp_path)
    write_fixture(tmp_path, OTHER)
    figure, note = figures_tab.set_figure(MODEL)
    assert [a.text for a in figure.layout.annotations] == [
        "Top-10 safety heads on JailbreakBench",
        "Top-10 safety heads on MaliciousInstruct",
    ]
    ua = figure.data[0]  # the fixture holds UA files only, ranked alike on both sets
    assert list(zip(ua.x, ua.y, strict=True)) == FIXTURE_TOP and ua.marker.symbol == "circle"
    assert "Not computed yet" in note and "JailbreakBench / SC" in note
    figure, note = figures_tab.model_figure(MODEL, OTHER, "maliciousinstruct")
    assert [t.name for t in figure.data] == [MODEL, OTHER]
    assert [layer for layer, _ in FIXTURE_TOP] == list(figure.data[1].x)
    assert f"{OTHER} / MaliciousInstruct / SC" in note
    assert figures_tab.set_figure("nobody") == (None, "No precomputed generalized Ships scores for **nobody** yet.")
    assert figures_tab.model_figure("nobody", "", "jailbreakbench")[0] is None


def test_real_precomputed_files_if_present(monkeypatch):
    monkeypatch.setenv("SAFETY_HEADS_PRECOMPUTED", str(PRECOMPUTED_DIR))
    found = available(PRECOMPUTED_DIR)
    if not found:
        pytest.skip(f"no precomputed files in {PRECOMPUTED_DIR} yet")
    for slug, prompt_set, mode in found:
        opts = head_options(slug, prompt_set, mode, root=PRECOMPUTED_DIR)
        assert opts.pre is not None, opts.note
        assert opts.rankings and (len(opts.top) == 10 or opts.ranking in GROUPS)
        assert set(opts.suggested) <= {h for h, _ in opts.top}
        if opts.scores is not None:
            assert opts.scores.shape == (opts.pre.n_layers, opts.pre.n_heads)
            plots.score_heatmap(opts.scores, [h for h, _ in opts.top]).to_json()
    for slug in {slug for slug, _, _ in found}:
        figure, note = figures_tab.set_figure(slug)
        assert figure is not None, note
        figure.to_json()


def test_the_methods_figure_draws_each_ranking_against_k_beside_the_random_band(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_HEADS_PRECOMPUTED", str(tmp_path))
    jbb, mi = "jailbreakbench", "maliciousinstruct"
    rows = [
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:1], 0.2, mode="SC"),
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:3], 0.6, mode="SC"),
        grid_row("ships", jbb, mi, FIXTURE_TOP[:3], 0.1, mode="SC"),
        grid_row("random", jbb, mi, [(0, 0), (1, 1), (2, 2)], 0.0, mode="SC"),
        grid_row("random", jbb, mi, [(0, 1), (1, 2), (2, 3)], 0.1, mode="SC"),
        grid_row("refusal", mi, jbb, FIXTURE_TOP[:3], 0.4, mode="SC"),
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:3], 0.9, mode="UA"),  # the other mode
        grid_row("refusal", jbb, mi, FIXTURE_TOP[:3], 0.9, subset="all", mode="SC"),  # not the refused prompts
        grid_row("none", "-", mi, [], 0.0, mode="UA"),
    ]
    (tmp_path / MODEL).mkdir()
    (tmp_path / MODEL / "summary.json").write_text(json.dumps({"ablations": rows}))
    figure, note = figures_tab.methods_figure(MODEL, "SC")
    assert "coherent ASR" in note  # these rows have no attempt rate
    assert [a.text for a in figure.layout.annotations] == [
        "JailbreakBench → MaliciousInstruct",
        "MaliciousInstruct → JailbreakBench",
    ]
    first = [t for t in figure.data if t.xaxis == "x"]
    assert [t.name for t in first] == ["random heads", "ships", "refusal"]  # the registry's order
    band, ships, refusal = first
    assert list(band.x) == [3, 3] and list(band.y) == [0.1, 0.0]
    assert (list(refusal.x), list(refusal.y)) == ([1, 3], [0.2, 0.6]) and list(ships.y) == [0.1]
    assert figures_tab.methods_figure("absent", "SC")[0] is None
