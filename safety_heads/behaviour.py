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

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from .answers import DecodingConfig, generate_many
from .coherence import calibrate_limit, judge_answers
from .datasets import load_prompts
from .judge import RefusalJudge, attack_success
from .models import TEMPLATES, LoadedModel, default_model, load_model
from .precomputed import PRECOMPUTED_DIR, model_slug
from .provenance import code_version, prompt_set_provenance, write_json
from .runtime import add_runtime

DEFAULT_SETS = ("jailbreakbench", "maliciousinstruct", "xstest_safe")


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_model())
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS))
    p.add_argument("-n", type=int, default=None, help="first N prompts of each set (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--template", choices=TEMPLATES, default="chat")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--benign", default="alpaca_seed_tasks", help="benign set the coherence limit is calibrated on")
    p.add_argument("--n-benign", type=int, default=50)
    p.add_argument("--calibration-tokens", type=int, default=64, help="length of the sampled benign answers")
    p.add_argument("--out", type=Path, default=PRECOMPUTED_DIR)
    add_runtime(p)


def measure_set(
    lm: LoadedModel, prompts: list[str], decoding: DecodingConfig, template: str, batch_size: int, limit: float
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


def run(args) -> None:
    path = behaviour_path(args.model, args.out)
    record = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"max_new_tokens": args.max_new_tokens, "template": args.template, "n": args.n}
    answers_path = path.with_name("behaviour-answers.jsonl")
    if record.get("settings") != settings:  # other settings: start over
        record = {"settings": settings, "sets": {}}
        answers_path.unlink(missing_ok=True)
    lm = load_model(args.model, runtime=args.runtime)
    record |= {"model": lm.model_id, "provenance": {**lm.provenance, "code_version": code_version()}}
    record["command"] = "python -m safety_heads " + shlex.join(sys.argv[1:])
    if "coherence" not in record:
        benign = load_prompts(args.benign, n=args.n_benign)
        print(f"calibrating the coherence limit on {len(benign)} {args.benign} prompts", file=sys.stderr)
        coherence = calibrate_limit(lm, benign, args.template, args.calibration_tokens, batch_size=args.batch_size)
        record["coherence"] = {
            "calibration_set": prompt_set_provenance(args.benign, len(benign)),
            "max_new_tokens": args.calibration_tokens,
            **coherence,
        }
        write_json(path, record)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    for prompt_set in args.sets:
        if prompt_set in record["sets"]:
            print(f"{prompt_set}: done already, skipped", file=sys.stderr)
            continue
        prompts = load_prompts(prompt_set, n=args.n)
        start = time.time()
        limit = record["coherence"]["limit"]
        rates, answers, surprise = measure_set(lm, prompts, decoding, args.template, args.batch_size, limit)
        rates["seconds"] = round(time.time() - start, 1)
        rates["prompt_set"] = prompt_set_provenance(prompt_set, len(prompts))
        with open(answers_path, "a") as f:
            f.write(json.dumps({"set": prompt_set, "answers": answers, "surprise": surprise}) + "\n")
        record["sets"][prompt_set] = rates
        write_json(path, record)
        print(
            f"{prompt_set}: N={rates['n']} refusal {rates['refusal']:.3f} opening refusal "
            f"{rates['opening_refusal']:.3f} degenerate {rates['degenerate']:.3f} ({rates['seconds']} s)",
            file=sys.stderr,
        )
