"""Command line: `python -m safety_heads ships|generate|asr|precompute|report|behaviour ...`.

Parses, calls the library, prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .ablation import DEFAULT_EPS, MODES, format_head, parse_heads
from .models import TEMPLATES, ModelLoadError, default_model, load_model
from .runtime import add_runtime


def _progress_bar(desc: str) -> tuple[tqdm, Callable[[int, int], None]]:
    bar = tqdm(desc=desc, unit="step", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _load(args):
    """A catalog name loads as in the library and the app; a hub id or folder takes --adapter and --quantize."""
    return load_model(args.model, adapter=args.adapter, quantize=args.quantize, runtime=args.runtime)


def cmd_ships(args) -> None:
    from .ships import ships, top_heads

    lm = _load(args)
    bar, progress = _progress_bar("Ships")
    scores = ships(lm, args.prompt, args.mode, args.eps, args.template, progress=progress)
    bar.close()
    print(f"Ships ({args.mode}, eps={args.eps}) on {lm.model_id}: KL(p_base || p_ablated), nats")
    for rank, (head, score) in enumerate(top_heads(scores, args.top_k), 1):
        print(f"{rank:3d}  {format_head(head):>6}  {score:.6f}")


def cmd_generate(args) -> None:
    from .answers import DecodingConfig, stream_pair
    from .judge import RefusalJudge

    lm = _load(args)
    heads = parse_heads(args.heads, lm.n_layers, lm.n_heads)
    decoding = DecodingConfig(args.decoding, args.max_new_tokens, seed=args.seed)
    *_, (intact, ablated) = stream_pair(lm, args.prompt, heads, args.mode, args.eps, args.template, decoding)
    judge = RefusalJudge()
    for name, text in (
        ("intact", intact),
        (f"ablated {args.mode} {', '.join(map(format_head, heads))}", ablated),
    ):
        verdict = judge(text)
        print(f"--- {name}: {verdict.label} ({verdict.reason})\n{text}\n")


def cmd_asr(args) -> None:
    from .answers import DecodingConfig, generate_many
    from .coherence import judge_answers
    from .datasets import load_prompts
    from .judge import RefusalJudge, attack_success
    from .precomputed import coherence_limit

    prompts = load_prompts(args.data, args.column, args.n)
    lm = _load(args)
    heads = parse_heads(args.heads, lm.n_layers, lm.n_heads)
    decoding = DecodingConfig(args.decoding, args.max_new_tokens, seed=args.seed)
    bar, progress = _progress_bar("answers")
    answers = generate_many(lm, prompts, heads, args.mode, args.eps, args.template, decoding, args.batch_size, progress)
    bar.close()
    # The same verdicts as the evaluation and the app: word salad by the limit calibrated for this model.
    limit = coherence_limit(lm.model_id)
    verdicts, _ = judge_answers(lm, RefusalJudge(), prompts, answers, limit, args.template, args.batch_size)
    result = attack_success(verdicts)
    if args.out:
        with open(args.out, "w") as f:
            for prompt, answer, v in zip(prompts, answers, verdicts):
                f.write(json.dumps({"prompt": prompt, "answer": answer, **v.__dict__}) + "\n")
    heads_text = ", ".join(map(format_head, heads)) or "none"
    rule = f"surprise limit {limit:.2f} nats/token" if limit is not None else "text rules only (no calibrated limit)"
    print(f"{lm.model_id}  {args.data}  N={result.n}  heads={heads_text}  mode={args.mode}  coherence: {rule}")
    print(
        f"ASR {result.asr:.3f}  coherent ASR {result.coherent_asr:.3f}  "
        f"refusal {result.refusal:.3f}  degenerate {result.degenerate:.3f}"
    )


def cmd_report(args) -> None:
    from .evaluation import StoredGrid, results_table

    summary = json.loads(args.summary.read_text())
    # The answers stored beside it, judged again, give each row's interval (grids that measured coherence).
    stored = (args.summary.parent / "answers.jsonl").is_file() and "coherence" in summary
    print(results_table(summary, StoredGrid(args.summary.parent) if stored else None))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=default_model(), help="catalog name, hub id or local folder")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (models outside the catalog)")
    parser.add_argument("--quantize", choices=["auto", "4bit", "none"], default="auto")
    add_runtime(parser)
    parser.add_argument("--mode", choices=MODES, default="UA", help="UA: undifferentiated attention; SC: scale output")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS, help="ablation scale, in (0, 1]")
    parser.add_argument("--template", choices=TEMPLATES, default="chat")


def _decoding(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", default="", help='heads to ablate, e.g. "18-8, 7-2"')
    parser.add_argument("--decoding", choices=["greedy", "top-k"], default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safety_heads", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ships", help="score every head on one prompt; print the top-k")
    _common(p)
    p.add_argument("prompt")
    p.add_argument("--top-k", type=int, default=10)
    p.set_defaults(func=cmd_ships)

    p = sub.add_parser("generate", help="intact vs ablated answers to one prompt")
    _common(p)
    _decoding(p)
    p.add_argument("prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("asr", help="attack success rate over a prompt set")
    _common(p)
    _decoding(p)
    p.add_argument("--data", required=True, help="known set name (jailbreakbench, ...) or a CSV/JSONL path")
    p.add_argument("--column", default=None)
    p.add_argument("-n", type=int, default=None, help="first N prompts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="write every answer and verdict as JSONL")
    p.set_defaults(func=cmd_asr)

    from . import behaviour, precompute
    from .settings import BehaviourSettings, PrecomputeSettings, add_arguments, from_args

    p = sub.add_parser("precompute", help="attribute heads per set x mode; with --evaluate, measure ASR")
    add_arguments(p, PrecomputeSettings)
    p.set_defaults(func=lambda args: precompute.run(from_args(PrecomputeSettings, args)))

    p = sub.add_parser("report", help="print a summary.json's ablations as a Markdown table")
    p.add_argument("summary", type=Path, help="precomputed/<model>/summary.json")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("behaviour", help="the intact model's answers to whole sets: refusal rates, refused rows")
    add_arguments(p, BehaviourSettings)
    p.set_defaults(func=lambda args: behaviour.run(from_args(BehaviourSettings, args)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
