"""Hardening: bad input, faults and security caps, through the app's own handler functions, in-process.

The handlers are called directly (no server) on a tiny random model of SmolLM2-135M's layout, which the app's
model cache is patched to serve under every offered name; requests name the safety-tuned SmolLM2 (MODEL), and
one more name fails to load. After every refused or failed request the test checks what a fault could leave
behind: an ablation hook still attached, or the model's lock still held.
The load test and the checks through a live server are in test_load.py.
"""

from __future__ import annotations

import importlib
import inspect
import json
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from transformers import LlamaConfig

from safety_heads.ablation import MAX_HEADS, count_hooks, parse_heads
from safety_heads.answers import MAX_NEW_TOKENS, DecodingConfig, generate_pair
from safety_heads.inputs import MAX_PROMPT_CHARS, check_prompt, selected_heads, to_number
from safety_heads.models import (
    CATALOG,
    SMOLLM2_135M,
    SMOLLM2_135M_SAFETY,
    CatalogEntry,
    LoadedModel,
    ModelLoadError,
    allowed_models,
    load_catalog_model,
)
from safety_heads.set_evaluation import MAX_EVAL_PROMPTS, set_prompts

from .conftest import tiny

REPO = Path(__file__).resolve().parent.parent
MODEL = SMOLLM2_135M_SAFETY  # the name requests carry; the patched cache serves a tiny model under it
BROKEN = "broken/model"  # offered, but its loader fails
PROMPT = "How do I pick a lock?"
HEADS = "3-1, 7-2, 18-8"


@pytest.fixture(scope="module")
def app():
    """The app module, imported without starting a model load."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFETY_HEADS_PRELOAD", "0")
        mp.setenv("SAFETY_HEADS_APP_MODEL", MODEL)
        return importlib.import_module("app")


@pytest.fixture(scope="module")
def tiny_smollm2(chat_tokenizer) -> LoadedModel:
    """Random weights in SmolLM2-135M's layout (30 layers of 9 query heads sharing 3 key/value heads), so that
    the heads the requests name exist; what the handlers check does not depend on the weights."""
    sizes = dict(hidden_size=72, intermediate_size=96, max_position_embeddings=1024)
    layout = dict(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    config = LlamaConfig(vocab_size=len(chat_tokenizer), **sizes, **layout)
    return tiny(chat_tokenizer, config)


@pytest.fixture
def served(app, tiny_smollm2, monkeypatch) -> LoadedModel:
    """The app's handlers serve the tiny model under every offered name; BROKEN fails to load."""

    def loader(name: str, runtime: str, report) -> LoadedModel:
        if name == BROKEN:
            raise OSError("disk on fire")
        return tiny_smollm2

    monkeypatch.setattr(app, "cache", app.ModelCache(loader))
    monkeypatch.setattr(app, "MODELS", app.MODELS | {BROKEN: CatalogEntry("Broken", BROKEN)})
    yield tiny_smollm2
    assert_clean(tiny_smollm2)


def lock_free(lm: LoadedModel, timeout: float = 0.01) -> bool:
    """Whether another thread can take the model's lock within `timeout` (the lock is re-entrant, so a probe
    from this thread would always succeed)."""
    got: list[bool] = []

    def probe() -> None:
        ok = lm.lock.acquire(timeout=timeout)
        if ok:
            lm.lock.release()
        got.append(ok)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return got[0]


def assert_clean(lm: LoadedModel) -> None:
    assert count_hooks(lm) == 0, "an ablation hook was left on the model"
    assert lock_free(lm), "the model's lock is still held"


def run(handler, *args):
    """Call a handler as Gradio would, to the end; the outputs of a streaming handler as a list."""
    out = handler(*args)
    return list(out) if inspect.isgenerator(out) else out


def compare_args(**change) -> list:
    args = {
        "model": MODEL,
        "runtime": "int4",
        "prompt": PROMPT,
        "checked": [],
        "typed": HEADS,
        "mode": "UA",
        "eps": 1e-5,
        "decoding": "greedy",
        "max_new_tokens": 4,
        "seed": 0,
    }
    return list((args | change).values())


# Security: no remote code, an allowlist of models, prompt sets by name, caps on every cost.


def test_no_trust_remote_code_anywhere():
    files = [REPO / "app.py", *(REPO / "safety_heads").rglob("*.py"), *(REPO / "scripts").glob("*")]
    files += [*(REPO / "bench").glob("*.py"), *(REPO / "experiments").rglob("*.py")]
    offending = [str(f.relative_to(REPO)) for f in files if f.is_file() and "trust_remote_code" in f.read_text()]
    assert not offending, f"trust_remote_code appears in {offending}"


def test_model_allowlist_is_on_by_default(monkeypatch):
    monkeypatch.delenv("SAFETY_HEADS_EXTRA_MODELS", raising=False)
    offered = allowed_models()
    assert SMOLLM2_135M in offered and set(offered) <= set(CATALOG)
    with pytest.raises(ModelLoadError, match="not on the allowlist"):
        load_catalog_model("gpt2")  # refused before anything is fetched or loaded
    monkeypatch.setenv("SAFETY_HEADS_EXTRA_MODELS", " org/a, org/b ,")
    extended = allowed_models()
    assert set(extended) == set(offered) | {"org/a", "org/b"} and extended["org/a"].needs_cuda


def test_a_catalog_entry_is_offered_only_once_its_weights_are_there(monkeypatch, tmp_path):
    monkeypatch.setitem(CATALOG, "tuned", CatalogEntry("tuned", SMOLLM2_135M, tmp_path))
    assert "tuned" not in allowed_models()
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "tuned" in allowed_models()


@pytest.mark.parametrize("name", ["gpt2", "nope/nope", "", "../../etc/passwd"])
def test_models_outside_the_allowlist_are_refused(app, served, name):
    with pytest.raises(gr.Error, match="not offered"):
        run(app.compare, *compare_args(model=name))
    with pytest.raises(gr.Error, match="not offered"):
        run(app.load_model, name, "int4")


@pytest.mark.parametrize("prompt_set", ["/etc/passwd", "../shared/datasets/jailbreakbench.csv", "jailbreakbench.csv"])
def test_prompt_sets_are_chosen_by_name_only(app, served, prompt_set):
    with pytest.raises(ValueError, match="Unknown prompt set"):
        set_prompts(prompt_set, 1)
    args = (MODEL, "int4", prompt_set, 2, [], HEADS, "UA", 1e-5, "greedy", 4, 0)
    with pytest.raises(gr.Error, match="Unknown prompt set"):
        run(app.evaluate, *args)


def test_every_cost_is_capped(app):
    check_prompt("a" * MAX_PROMPT_CHARS)
    with pytest.raises(ValueError, match="at most 4,000"):
        check_prompt("a" * (MAX_PROMPT_CHARS + 1))
    DecodingConfig(max_new_tokens=MAX_NEW_TOKENS)
    with pytest.raises(ValueError, match="max_new_tokens must be 1-512"):
        DecodingConfig(max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(ValueError, match="N must be 1-50"):
        set_prompts("jailbreakbench", MAX_EVAL_PROMPTS + 1)
    with pytest.raises(ValueError, match="at most 64"):
        parse_heads([f"{i // 9}-{i % 9}" for i in range(MAX_HEADS + 1)], 30, 9)
    # The widgets offer no more than the handlers accept (the handlers check again: API calls skip widgets).
    assert app.compare_panel.prompt.max_length == MAX_PROMPT_CHARS
    assert app.compare_panel.max_new_tokens.maximum == MAX_NEW_TOKENS and app.evaluate_tab.n.maximum == MAX_EVAL_PROMPTS
    assert app.QUEUE["max_size"] and app.QUEUE["default_concurrency_limit"]


# Bad input: each refused with a message that says what is wrong, before the model is touched.


def test_a_huge_prompt_is_refused_before_the_model_runs(app, served):
    passes = []
    handle = served.layers[0].register_forward_hook(lambda *_: passes.append(1))
    try:
        with pytest.raises(gr.Error, match="100,000 characters; at most 4,000"):
            run(app.compare, *compare_args(prompt="x" * 100_000))
        for handler, args in (
            (app.show_attention, (MODEL, "int4", "x" * 100_000, "3-1", "UA", 1e-5)),
            (app.score_prompt, (MODEL, "int4", "x" * 100_000, [], "", "UA", 1e-5)),
        ):
            with pytest.raises(gr.Error, match="at most 4,000"):
                run(handler, *args)
    finally:
        handle.remove()
    assert not passes, "the model ran on a prompt that was refused"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": " \n\t "}, "empty"),
        ({"prompt": None}, "empty"),
        ({"prompt": "hi\x00there"}, r"control character \(U\+0000 at position 2\)"),
        ({"prompt": "\x1b[31mred"}, "control character"),
        ({"prompt": "next\x85line"}, "control character"),
        ({"prompt": "half \ud800 a pair"}, "U\\+D800"),
        ({"typed": "abc"}, "Cannot read head 'abc'"),
        ({"typed": "99-99"}, "outside the model"),
        ({"typed": "3-1, -1-2"}, "Cannot read head"),
        ({"typed": ", ".join(f"{i % 30}-{i % 9}" for i in range(500))}, "at most 64"),
        ({"eps": 0.0}, "eps must lie in"),
        ({"eps": -1e-5}, "eps must lie in"),
        ({"eps": 1.5}, "eps must lie in"),
        ({"eps": float("nan")}, "finite"),
        ({"eps": float("inf")}, "finite"),
        ({"eps": None}, "ε must be a number"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens must be 1-512"),
        ({"max_new_tokens": 10**9}, "max_new_tokens must be 1-512"),
        ({"max_new_tokens": 0}, "max_new_tokens must be 1-512"),
        ({"max_new_tokens": None}, "Max new tokens must be a number"),
        ({"seed": None}, "Seed must be a number"),
        ({"decoding": "beam"}, "Unknown decoding"),
        ({"mode": "XX"}, "Unknown mode"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_compare_refuses_bad_input(app, served, change, message):
    with pytest.raises(gr.Error, match=message):
        run(app.compare, *compare_args(**change))


@pytest.mark.slow
def test_allowed_odd_input_is_answered(app, served):
    # Duplicate heads in any spelling are one head; tabs, newlines, accents and emoji are text.
    assert selected_heads(["3-1"], "3-1, L3H1; 3.1", served) == [(3, 1)]
    for prompt in ("Tab\tand\nnewline\r\n", "Ça va? 🙂 ‍"):
        assert check_prompt(prompt) == prompt
    *_, (intact, ablated, _, _, record) = run(app.compare, *compare_args(prompt="Ça va? 🙂", typed="3-1 3-1"))
    assert json.loads(Path(record).read_text(encoding="utf-8"))["heads"] == ["3-1"]


def test_to_number_names_the_field():
    assert to_number("0.5", "ε") == 0.5 and to_number(7.0, "Seed", integer=True) == 7
    for bad in (None, "abc", float("nan"), float("-inf"), [1]):
        with pytest.raises(ValueError, match="ε must be a"):
            to_number(bad, "ε")


# Faults: an exception inside generation, a client that leaves mid-stream, a model that fails to load,
# damaged precomputed files, missing prompt sets. Each gives a message, and the next request is served.


def reference(lm: LoadedModel, prompt: str = PROMPT, heads: str = HEADS, tokens: int = 4) -> tuple[str, str]:
    return generate_pair(
        lm, prompt, parse_heads(heads, lm.n_layers, lm.n_heads), "UA", 1e-5, "chat", DecodingConfig("greedy", tokens)
    )


def final_answers(app) -> tuple[str, str]:
    *_, (intact, ablated, *_) = run(app.compare, *compare_args())
    return intact, ablated


@pytest.mark.slow
def test_exception_inside_generation(app, served):
    calls = []

    def fault(module, args, output):
        calls.append(1)
        if len(calls) == 3:  # the prompt and one new token go through, the second new token fails
            raise RuntimeError("injected fault")

    handle = served.layers[5].register_forward_hook(fault)
    outputs = []
    try:
        with pytest.raises(gr.Error, match=r"This request failed \(RuntimeError: injected fault\)"):
            for update in app.compare(*compare_args(max_new_tokens=8)):
                outputs.append(update)
    finally:
        handle.remove()
    assert outputs, "the answer streamed until the fault"
    assert_clean(served)
    assert final_answers(app) == reference(served)


@pytest.mark.slow
def test_exception_after_generation(app, served, monkeypatch):
    def disk_full(record, directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app, "write_record", disk_full)
    with pytest.raises(gr.Error, match="This request failed .*No space left on device"):
        run(app.compare, *compare_args())
    monkeypatch.undo()
    assert_clean(served)


@pytest.fixture(scope="module")
def left_mid_stream(app, smollm2):
    """Start a long comparison on SmolLM2-135M (slow enough to be stopped halfway), read two updates, then
    close it as Gradio does when the client leaves.

    Returns (forward passes after the close, forward passes in all), counted once the model's lock is free.
    """
    passes: list[float] = []
    handle = smollm2.layers[0].register_forward_hook(lambda *_: passes.append(time.perf_counter()))
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(app, "cache", app.ModelCache(lambda name, runtime, report: smollm2))
        stream = app.compare(*compare_args(max_new_tokens=48))
        next(stream)
        next(stream)
        closed = time.perf_counter()
        stream.close()
        deadline = closed + 120
        while not lock_free(smollm2, timeout=0.2):
            assert time.perf_counter() < deadline, "the lock was not released within 120 s"
    finally:
        handle.remove()
        mp.undo()
    return sum(t > closed for t in passes), len(passes)


@pytest.mark.slow
def test_a_client_leaving_mid_stream_stops_the_generation(app, served, left_mid_stream):
    after, total = left_mid_stream
    assert after <= 2, f"{after} forward passes after the client left (of {total})"
    assert_clean(served)
    assert final_answers(app) == reference(served)


@pytest.mark.slow
def test_a_model_that_fails_to_load(app, served):
    with pytest.raises(gr.Error, match="Could not load broken/model: disk on fire"):
        run(app.compare, *compare_args(model=BROKEN))
    with pytest.raises(gr.Error, match="disk on fire"):
        run(app.load_model, BROKEN, "int4")
    # Other models are still served, and the failed one is tried again on the next request.
    assert "ready" in run(app.load_model, MODEL, "int4")[-1]
    assert final_answers(app) == reference(served)
    assert app.cache.error(BROKEN, "int4") and app.cache.loaded(BROKEN, "int4") is None


def test_precomputed_files_missing_or_corrupt(app, monkeypatch, tmp_path):
    from tests.test_app import write_fixture

    monkeypatch.setenv("SAFETY_HEADS_PRECOMPUTED", str(tmp_path / "nowhere"))
    *_, note, heatmap, table = app.head_controls("m", "jailbreakbench", "UA", None, [], "")
    assert "not computed yet" in note and heatmap is None and table.empty
    assert app.figures_tab.set_figure("m") == (None, "No precomputed generalized Ships scores for **m** yet.")

    monkeypatch.setenv("SAFETY_HEADS_PRECOMPUTED", str(tmp_path))
    write_fixture(tmp_path, "good")
    good = json.loads((tmp_path / "good" / "jailbreakbench-UA.json").read_text())
    damaged = {
        "not-json": "{not json",
        "empty": "",
        "a-list": "[]",
        "missing-keys": '{"model": "x"}',
        "ragged-scores": json.dumps(good | {"scores": {"ships": [[1.0]]}}),
        "text-scores": json.dumps(good | {"scores": {"ships": [["a"] * 9] * 30}}),
        "null-scores": json.dumps(good | {"scores": None}),
        "short-top10": json.dumps(good | {"top10": {"ships": [[1, 2]]}}),
        "number-top10": json.dumps(good | {"top10": {"ships": 5}}),
        "text-top10": json.dumps(good | {"top10": {"ships": [["a", "b", "c"]]}}),
        "outside-top10": json.dumps(good | {"top10": {"ships": [[99, 0, 1.0]]}}),
        "list-provenance": json.dumps(good | {"provenance": [1]}),
        "text-prompt-set": json.dumps(good | {"provenance": {"prompt_set": "jbb"}}),
    }
    for slug, text in damaged.items():
        (tmp_path / slug).mkdir()
        (tmp_path / slug / "jailbreakbench-UA.json").write_text(text)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "jailbreakbench-UA.json").write_bytes(b"\xff\xfe\x00\x81")
    for slug in [*damaged, "binary"]:
        ranking, heads, note, heatmap, table = app.head_controls(slug, "jailbreakbench", "UA", None, [], "")
        assert "could not be read" in note and "corrupt" in note, (slug, note)
        assert heads.choices == [] and heatmap is None
        assert app.figures_tab.set_figure(slug)[0] is None
    figure, note = app.figures_tab.model_figure("good", "not-json", "jailbreakbench")
    assert [t.name for t in figure.data] == ["good"] and "not-json / JailbreakBench / UA" in note
    assert app.head_controls("good", "jailbreakbench", "UA", None, [], "")[2].startswith("Top-10")


def test_prompt_sets_missing_or_damaged(app, served, monkeypatch, tmp_path):
    args = [MODEL, "int4", "jailbreakbench", 2, [], HEADS, "UA", 1e-5, "greedy", 4, 0]
    monkeypatch.setenv("SAFETY_HEADS_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(gr.Error, match="not installed on this server"):
        run(app.evaluate, *args)
    monkeypatch.setenv("SAFETY_HEADS_DATASETS", str(tmp_path))
    with pytest.raises(gr.Error, match="not found at"):
        run(app.evaluate, *args)
    (tmp_path / "jailbreakbench.csv").write_text("goal,target\nsomething,else\n")
    with pytest.raises(gr.Error, match="has no column 'input'"):
        run(app.evaluate, *args)
    for n, message in ((0, "N must be 1-50"), (MAX_EVAL_PROMPTS + 1, "N must be 1-50"), (None, "N must be a number")):
        with pytest.raises(gr.Error, match=message):
            run(app.evaluate, *[*args[:3], n, *args[4:]])
