"""The alignment recipe's training data (see `align`): harmful requests answered by refusals, benign ones by
the un-tuned model itself.

- harmful: AdvBench behaviours, as written (imperative) and rewritten by rule into a question, each
  answered by a refusal drawn from `data/refusals.txt`;
- benign: the Alpaca seed tasks and `data/benign_prompts.txt` (safe uses of scary words among them),
  answered by the un-tuned model's own greedy answers, so the tuned model keeps its helpfulness as it was.

JailbreakBench, MaliciousInstruct and XSTest are the evaluation sets: no prompt of theirs may enter the
training data, and `assert_disjoint` checks it before training.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from safety_heads.answers import DecodingConfig, generate_many
from safety_heads.datasets import load_prompts, resolve
from safety_heads.models import LoadedModel

DATA_DIR = Path(__file__).resolve().parent / "data"
# Never trained on: the sets that the refusal and over-refusal numbers are measured on.
EVAL_SETS = ("jailbreakbench", "maliciousinstruct", "xstest_safe")
NEAR_DUPLICATE = 0.6  # word-set Jaccard from which a training prompt counts as a copy of an evaluation prompt

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    kind: str  # "harmful" or "benign"
    source: str  # advbench, advbench-question, alpaca or handwritten
    finished: bool = True  # the answer ended on its own, so the end-of-turn token is trained too


# --- Question forms ------------------------------------------------------------------------------------

_INFINITIVE_RE = re.compile(
    r"\b(?:how|plan|strategy|way|ways|steps|instructions|guide|tutorial|method|methods|scheme|program|"
    r"app|script|tool|software|algorithm|bot|system)\s+to\s+(?P<core>.+)$",
    re.IGNORECASE,
)
_GERUND_RE = re.compile(r"\b(?:for|on|about)\s+(?P<core>[a-z]+ing\b.*)$", re.IGNORECASE)
_NOT_GERUNDS = {"thing", "something", "anything", "nothing", "everything", "king", "ring", "spring", "string"}

# Forms for a core in the infinitive ("make a bomb"); MaliciousInstruct-style short forms among them.
INFINITIVE_FORMS = (
    "How do I {x}?",
    "How can I {x}?",
    "Can you explain how to {x}?",
    "What's the best way to {x}?",
    "How to {x}?",
    "What are the steps to {x}?",
    "Is there a way to {x}?",
    "Ways to {x}?",
    "How would someone {x}?",
    "Could you tell me how to {x}?",
)
# Forms for a gerund core ("hacking into a government database").
GERUND_FORMS = (
    "Tips for {x}?",
    "Any advice on {x}?",
    "What's the most effective approach to {x}?",
    "Ideas for {x}?",
    "How should I go about {x}?",
)
# Forms for the whole imperative ("write a fake news article").
IMPERATIVE_FORMS = (
    "Can you {x}?",
    "Could you {x}?",
    "Would you {x} for me?",
    "Is it possible for you to {x}?",
    "I need you to {x}. Can you do that?",
)


def _clean(text: str) -> str:
    return text.strip().strip("\"'").strip().rstrip(".!?").strip()


def _lower_first(text: str) -> str:
    # Keep acronyms and names as written ("US", "DDoS"); lowercase an ordinary first word.
    first = text.split(" ", 1)[0]
    return text if first[1:2].isupper() else text[:1].lower() + text[1:]


def infinitive_core(prompt: str) -> str | None:
    """The action after "how to" (or "a plan to", "a script to", ...): "make a bomb", or None."""
    match = _INFINITIVE_RE.search(_clean(prompt))
    return _clean(match["core"]) if match else None


def gerund_core(prompt: str) -> str | None:
    """The action after "for/on/about" when it is a gerund: "hacking into a database", or None."""
    match = _GERUND_RE.search(_clean(prompt))
    if not match or match["core"].split(" ", 1)[0].lower() in _NOT_GERUNDS:
        return None
    return _clean(match["core"])


def question_forms(prompt: str) -> list[str]:
    """Every question the rules make of an imperative request, in a fixed order (deterministic).

    "Write a tutorial on how to make a bomb" -> "How do I make a bomb?", "Can you explain how to make a
    bomb?", ..., "Could you write a tutorial on how to make a bomb?". The whole-imperative forms always
    apply, so the list is never empty.
    """
    forms: list[str] = []
    if core := infinitive_core(prompt):
        forms += [f.format(x=core) for f in INFINITIVE_FORMS]
    if core := gerund_core(prompt):
        forms += [f.format(x=core) for f in GERUND_FORMS]
    whole = _lower_first(_clean(prompt))
    forms += [f.format(x=whole) for f in IMPERATIVE_FORMS]
    return forms


# --- Data --------------------------------------------------------------------------------------------


def read_lines(name: str) -> list[str]:
    """Non-empty, non-comment lines of a file in the data/ folder beside this module."""
    with open(DATA_DIR / name, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def refusal_for(prompt: str, templates: Sequence[str], rng: random.Random) -> str:
    """A refusal template, with the request's topic filled in where the template names it and one is known."""
    topic = infinitive_core(prompt)
    usable = [t for t in templates if topic or "{topic}" not in t]
    return rng.choice(usable).format(topic=topic)


def harmful_examples(
    prompts: Sequence[str], templates: Sequence[str], rng: random.Random, n_questions: int = 1
) -> list[Example]:
    """Each harmful prompt as written and in `n_questions` distinct question forms (fewer where the rules
    make fewer); each with its own refusal."""
    examples = []
    for prompt in prompts:
        forms = question_forms(prompt)
        questions = rng.sample(forms, min(n_questions, len(forms)))
        texts = [(prompt, "advbench")] + [(q, "advbench-question") for q in questions]
        for text, source in texts:
            examples.append(Example(text, refusal_for(prompt, templates, rng), "harmful", source))
    return examples


def alpaca_prompts() -> list[str]:
    """The Alpaca seed instructions, each with its input (where it has one) after a blank line."""
    path, _ = resolve("alpaca_seed_tasks")
    instructions = load_prompts("alpaca_seed_tasks")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    inputs = {row["instruction"].strip(): (row.get("instances") or [{}])[0].get("input", "") for row in rows}
    return [f"{i}\n\n{inputs[i].strip()}" if inputs.get(i, "").strip() else i for i in instructions]


def benign_prompts(seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, source) of every benign prompt: the Alpaca seed tasks, the handwritten ones, and one
    question form of each single-line imperative among them, made by the same rules as the harmful
    questions, so that the form of a request never tells harmful from benign."""
    rng = random.Random(seed)
    base = [(p, "alpaca") for p in alpaca_prompts()] + [(p, "handwritten") for p in read_lines("benign_prompts.txt")]
    questions = [
        (rng.choice(question_forms(p)), f"{source}-question")
        for p, source in base
        if "\n" not in p and not p.rstrip().endswith("?")
    ]
    return base + questions


def normalize_prompt(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", prompt.lower()).strip()


def _words(prompt: str) -> frozenset[str]:
    return frozenset(normalize_prompt(prompt).split())


def near_duplicates(
    prompts: Sequence[str], eval_sets: Sequence[str] = EVAL_SETS, threshold: float = NEAR_DUPLICATE
) -> dict[str, str]:
    """{training prompt: evaluation prompt} for every prompt whose word set overlaps an evaluation
    prompt's by at least `threshold` (Jaccard). JailbreakBench took some behaviours from AdvBench, word for
    word or nearly ("Develop a virus..." / "Develop malware..."), so exact matching is not enough."""
    held_out = [(q, _words(q)) for name in eval_sets for q in load_prompts(name)]
    found = {}
    for prompt in prompts:
        w = _words(prompt)
        for q, v in held_out:
            if len(w & v) >= threshold * len(w | v):
                found[prompt] = q
                break
    return found


def assert_disjoint(prompts: Sequence[str], eval_sets: Sequence[str] = EVAL_SETS) -> None:
    """Raise if any training prompt is, or nearly is, a prompt of an evaluation set."""
    found = near_duplicates(prompts, eval_sets)
    if found:
        pairs = "; ".join(f"{p!r} ~ {q!r}" for p, q in list(found.items())[:3])
        raise ValueError(f"{len(found)} training prompts are (near) copies of evaluation prompts: {pairs}")


def base_answers(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    cache: Path | None,
    progress: Progress | None = None,
) -> list[tuple[str, bool]]:
    """(answer, finished) of the un-tuned model to each prompt, greedy; cached on disk by prompt.

    `finished` is False when the answer ran to max_new_tokens: such an answer is cut, and the model must
    not learn to stop there.
    """
    key = f"{lm.provenance.get('model_sha256', lm.model_id)}:{max_new_tokens}"
    cached: dict[str, list] = {}
    if cache and cache.is_file():
        data = json.loads(cache.read_text())
        cached = data["answers"] if data.get("key") == key else {}
    todo = [p for p in dict.fromkeys(prompts) if p not in cached]
    if todo:
        # Sorting by length keeps left padding short; the order is fixed, so a rerun gives the same answers.
        todo.sort(key=lambda p: len(lm.tokenizer(p)["input_ids"]))
        answers = generate_many(
            lm, todo, decoding=DecodingConfig(max_new_tokens=max_new_tokens), batch_size=32, progress=progress
        )
        for prompt, answer in zip(todo, answers, strict=True):
            # Decoding drops the end-of-turn token, so a cut answer is told apart by its length.
            n_tokens = len(lm.tokenizer(answer, add_special_tokens=False)["input_ids"])
            cached[prompt] = [answer, n_tokens < max_new_tokens - 2]
    if cache and todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "answers": cached}, indent=1))
    return [tuple(cached[p]) for p in prompts]  # type: ignore[misc]


def harmful_data(seed: int, n_questions: int = 1) -> list[Example]:
    """The AdvBench refusal examples, minus every prompt that is (nearly) an evaluation prompt."""
    advbench = load_prompts("advbench")
    copies = near_duplicates(advbench)
    kept = [p for p in advbench if p not in copies]
    harmful = harmful_examples(kept, read_lines("refusals.txt"), random.Random(seed), n_questions)
    # A question form can land near an evaluation prompt that its imperative was not near.
    copies = near_duplicates([e.prompt for e in harmful])
    return [e for e in harmful if e.prompt not in copies]


def benign_data(
    lm: LoadedModel, max_new_tokens: int, cache: Path | None, seed: int = 0, progress: Progress | None = None
) -> list[Example]:
    """The benign examples, answered by the model as loaded (un-tuned): its own helpfulness is the target."""
    prompts = benign_prompts(seed)
    answers = base_answers(lm, [p for p, _ in prompts], max_new_tokens, cache, progress)
    return [
        Example(p, a, "benign", source, done)
        for (p, source), (a, done) in zip(prompts, answers, strict=True)
        if a.strip()
    ]
