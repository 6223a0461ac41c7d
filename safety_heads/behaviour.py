"""`python -m safety_heads behaviour`: how the intact model answers whole prompt sets, and which it refuses.

Greedy answers under the model's own template, judged three ways: the paper's keyword rule (refusal),
an opening refusal (the first sentence declines: the stricter reading) and degenerate (text rules, and the
intact model's surprise above a limit calibrated on its own sampled benign answers; see `coherence`).
A prompt counts as *refused* when its intact answer opens with a refusal; those row indices are what the
cross-set evaluation reads as the refused subset.

Writes precomputed/<model>/behaviour.json after every set, so a restart skips the sets already done, and
the answers to behaviour-answers.jsonl.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from .answers import DecodingConfig, generate_many
from .coherence import calibrate_limit, judge_answers
from .datasets import load_prompts
from .judge import RefusalJudge, attack_success
from .models import LoadedModel, Template, load_model
from .precomputed import PRECOMPUTED_DIR, model_slug
from .provenance import code_version, prompt_set_provenance, write_json
from .settings import BehaviourSettings


def behaviour_path(model: str, root: Path = PRECOMPUTED_DIR) -> Path:
    return root / model_slug(model) / "behaviour.json"


def refused_rows(model: str, prompt_set: str, root: Path = PRECOMPUTED_DIR) -> list[int]:
    """The rows of a prompt set whose intact answer opens with a refusal, as `behaviour` recorded them."""
    path = behaviour_path(model, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m safety_heads behaviour --model {model}` first")
    sets = json.loads(path.read_text())["sets"]
    if prompt_set not in sets:
        raise FileNotFoundError(f"{path} has no answers for {prompt_set}")
    return sets[prompt_set]["refused_rows"]


def measure_set(
    lm: LoadedModel, prompts: list[str], decoding: DecodingConfig, template: Template, batch_size: int, limit: float
) -> tuple[dict, list[str], list[float] | None]:
    """The intact model's judged answers to one set: the rates, the refused rows, the answers, their surprise."""
    answers = generate_many(lm, prompts, decoding=decoding, template=template, batch_size=batch_size)
    verdicts, surprise = judge_answers(lm, RefusalJudge(), prompts, answers, limit, template, batch_size)
    result = attack_success(verdicts)
    rates = {
        "n": result.n,
        "refusal": result.refusal,
        "opening_refusal": result.opening_refusal,
        "degenerate": result.degenerate,
        "refused_rows": [i for i, v in enumerate(verdicts) if v.opening_refusal],
    }
    return rates, answers, surprise


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def run(s: BehaviourSettings) -> None:
    path = behaviour_path(s.model, s.out)
    record = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"max_new_tokens": s.max_new_tokens, "template": s.template}
    answers_path = path.with_name("behaviour-answers.jsonl")
    # Each set records its own n; records from before that held one n for every set, and each set's as well.
    record.get("settings", {}).pop("n", None)
    if record.get("settings") != settings:  # other settings: start over
        record = {"settings": settings, "sets": {}}
        answers_path.unlink(missing_ok=True)
    lm = load_model(s.model, runtime=s.runtime)
    record |= {"model": lm.model_id, "provenance": {**lm.provenance, "code_version": code_version()}}
    record["command"] = "python -m safety_heads " + shlex.join(sys.argv[1:])
    if "coherence" not in record:
        benign = load_prompts(s.benign, n=s.n_benign)
        print(f"calibrating the coherence limit on {len(benign)} {s.benign} prompts", file=sys.stderr)
        coherence = calibrate_limit(lm, benign, s.template, s.calibration_tokens, batch_size=s.batch_size)
        record["coherence"] = {
            "calibration_set": prompt_set_provenance(s.benign, len(benign)),
            "max_new_tokens": s.calibration_tokens,
            **coherence,
        }
        write_json(path, record)
    decoding = DecodingConfig(max_new_tokens=s.max_new_tokens)
    for prompt_set in s.sets:
        prompts = load_prompts(prompt_set, n=s.n)
        if record["sets"].get(prompt_set, {}).get("n") == len(prompts):
            print(f"{prompt_set}: done already, skipped", file=sys.stderr)
            continue
        start = time.time()
        limit = record["coherence"]["limit"]
        rates, answers, surprise = measure_set(lm, prompts, decoding, s.template, s.batch_size, limit)
        rates["seconds"] = round(time.time() - start, 1)
        rates["prompt_set"] = prompt_set_provenance(prompt_set, len(prompts))
        # A set answered again (another n) replaces its earlier answers.
        kept = [line for line in _lines(answers_path) if json.loads(line)["set"] != prompt_set]
        line = json.dumps({"set": prompt_set, "answers": answers, "surprise": surprise})
        answers_path.write_text("".join(f"{x}\n" for x in [*kept, line]))
        record["sets"][prompt_set] = rates
        write_json(path, record)
        print(
            f"{prompt_set}: N={rates['n']} refusal {rates['refusal']:.3f} opening refusal "
            f"{rates['opening_refusal']:.3f} degenerate {rates['degenerate']:.3f} ({rates['seconds']} s)",
            file=sys.stderr,
        )
