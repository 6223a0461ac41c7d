"""Alignment: a seeded recipe that teaches the embedded SmolLM2-135M-Instruct to refuse harmful requests.

The un-tuned model refuses almost nothing, so there are no safety heads to find in it. This module trains
either a small LoRA adapter (the default; attention projections only: the paper reads safety heads as feature
extractors, so the refusal must then be read out through attention) or, with `method="full"`, every weight
of the model, which is closer to how real chat models are aligned. Both learn from two kinds of examples:
- harmful: AdvBench behaviours, as written (imperative) and rewritten by rule into a question, each
  answered by a refusal drawn from `data/refusals.txt`;
- benign: the Alpaca seed tasks and `data/benign_prompts.txt` (safe uses of scary words among them),
  answered by the un-tuned model's own greedy answers, so the adapter keeps its helpfulness as it was.

The loss covers only the answer tokens. JailbreakBench, MaliciousInstruct and XSTest are the evaluation
sets: no prompt of theirs may enter the training data, and `assert_disjoint` checks it before training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .datasets import load_prompts, resolve
from .models import FULL_WEIGHTS, LoadedModel, format_prompt, load_model

DATA_DIR = Path(__file__).resolve().parent / "data"
RUNS_DIR = Path(__file__).resolve().parent.parent / "runs" / "align"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")
# Never trained on: the sets that the refusal and over-refusal numbers are measured on.
EVAL_SETS = ("jailbreakbench", "maliciousinstruct", "xstest_safe")
NEAR_DUPLICATE = 0.6  # word-set Jaccard from which a training prompt counts as a copy of an evaluation prompt
IGNORE = -100  # label of the tokens the loss skips (prompt and padding)
METHODS = ("lora", "full")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AlignConfig:
    """The recipe; every field is a hyperparameter that the model card reports."""

    seed: int = 0
    steps: int = 150  # optimiser steps
    batch_size: int = 8  # examples per step
    benign_share: float = 0.6  # share of each batch drawn from the benign examples
    lr: float = 3e-3  # peak learning rate (AdamW), after a linear warm-up, then cosine decay to 10%
    warmup: int = 10  # warm-up steps
    weight_decay: float = 0.0
    rank: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scale numerator: the update is (alpha / rank) * B @ A
    dropout: float = 0.05  # LoRA dropout
    targets: tuple[str, ...] = ATTENTION  # module names that get a LoRA branch
    answer_tokens: int = 128  # how long the un-tuned model's benign answers may be
    max_len: int = 384  # training sequences are cut to this many tokens
    method: str = "lora"  # "lora": a LoRA adapter on `targets`; "full": every weight of the model is trained
    question_forms: int = 1  # rule-made question forms per AdvBench prompt, each with its own refusal

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.question_forms < 0:
            raise ValueError(f"question_forms must be at least 0; got {self.question_forms}")
        if not 0.0 <= self.benign_share < 1.0:
            raise ValueError(f"benign_share must be in [0, 1); got {self.benign_share}")
        if self.steps < 1 or self.batch_size < 1 or self.rank < 1:
            raise ValueError("steps, batch_size and rank must be at least 1")
        unknown = set(self.targets) - set(ALL_LINEAR)
        if unknown:
            raise ValueError(f"Unknown target modules {sorted(unknown)}; choose from {', '.join(ALL_LINEAR)}")


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
    """Non-empty, non-comment lines of a file in safety_heads/data/."""
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
    from .answers import DecodingConfig, generate_many

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


# --- Training ----------------------------------------------------------------------------------------


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that closes an assistant turn in the chat template (SmolLM2: <|im_end|>).

    Not `tokenizer.eos_token_id`: some tokenizer conversions set that to <|endoftext|>, which generation
    does not stop on, and a model trained on it keeps writing after its answer.
    """
    marker = "XYZZY"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.index(marker) + len(marker) :]
    return tokenizer(after, add_special_tokens=False)["input_ids"][0]


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_len: int, end_id: int | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels): the chat-formatted prompt, then the answer; labels are IGNORE on the prompt.

    Prompt and answer are tokenized apart, as at generation time, where the answer's tokens follow the
    prompt's last token ("assistant\\n") whatever the text would merge into. A finished answer ends with
    the end-of-turn token `end_id` (by default the chat template's), so the model learns to stop.
    """
    prompt = format_prompt(tokenizer, example.prompt, "chat")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if example.finished:
        answer_ids = answer_ids + [end_of_turn_id(tokenizer) if end_id is None else end_id]
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]
    assert len(ids) == len(labels)
    return ids, labels


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding is masked out of attention and of the loss."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def answer_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over examples of each answer's mean next-token cross-entropy (short refusals weigh as much as
    long answers). Logits are computed only where a label is, which saves most of the vocabulary product."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE  # (B, T-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer_tokens, vocab)
    token_loss = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]  # the example each answer token belongs to
    per_example = token_loss.new_zeros(keep.shape[0]).index_add_(0, rows, token_loss) / keep.sum(1).clamp(min=1)
    return per_example[keep.any(1)].mean()


def _lr_factor(step: int, config: AlignConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def batches(harmful: Sequence, benign: Sequence, config: AlignConfig, rng: random.Random) -> list[list]:
    """config.steps batches; each mixes benign and harmful rows in the configured share, cycling through
    shuffled copies of each pool so every example is seen before any is repeated."""
    n_benign = round(config.batch_size * config.benign_share)
    pools = {"harmful": (list(harmful), config.batch_size - n_benign), "benign": (list(benign), n_benign)}
    queues: dict[str, list] = {k: [] for k in pools}
    out = []
    for _ in range(config.steps):
        batch = []
        for name, (pool, n) in pools.items():
            for _ in range(n):
                if not queues[name]:
                    queues[name] = rng.sample(pool, len(pool))
                batch.append(queues[name].pop())
        out.append(batch)
    return out


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[Example],
    benign: Sequence[Example],
    config: AlignConfig,
    progress: Progress | None = None,
) -> list[float]:
    """Train the model's trainable parameters in place (on the model's device); returns every step's loss."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    end_id = end_of_turn_id(tokenizer)
    encoded = {id(e): encode_example(tokenizer, e, config.max_len, end_id) for e in [*harmful, *benign]}
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "nothing to train: the model has no trainable parameters"
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = model.get_input_embeddings().weight.device
    model.train()
    losses = []
    for step, batch in enumerate(batches(harmful, benign, config, rng)):
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        # Short refusals and long benign answers go through the model apart, each padded to its own length.
        for kind in ("harmful", "benign"):
            rows = [encoded[id(e)] for e in batch if e.kind == kind]
            if not rows:
                continue
            tensors = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            part = answer_loss(model, tensors) * len(rows) / len(batch)
            part.backward()
            loss += part.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss)
        if progress:
            progress(step + 1, config.steps)
    model.eval()
    return losses


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


def trainable(model: PreTrainedModel, config: AlignConfig) -> PreTrainedModel:
    """The model to train: wrapped with a LoRA branch on `config.targets`, or itself with every weight free."""
    if config.method == "full":
        return model.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_weights(model: PreTrainedModel, config: AlignConfig, output_dir: Path, base_model: str) -> Path:
    """Write the trained weights to output_dir and return the weights file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.method == "full":
        from safetensors.torch import save_model

        # save_pretrained refuses a GGUF-loaded model; save_model writes the state dict (tied weights once).
        save_model(model, str(output_dir / FULL_WEIGHTS))
        return output_dir / FULL_WEIGHTS
    # peft writes its own README.md beside the weights; save to a scratch folder and keep only the adapter.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config_path = Path(tmp) / "adapter_config.json"
        saved = json.loads(config_path.read_text())
        saved["base_model_name_or_path"] = base_model  # not this machine's install path
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(tmp) / name, output_dir / name)
    return output_dir / "adapter_model.safetensors"


def align(
    output_dir: Path,
    config: AlignConfig = AlignConfig(),
    *,
    cache: Path | None = RUNS_DIR / "benign_answers.json",
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Train the safety adapter on the embedded model and save it to output_dir; returns a summary.

    output_dir receives align_summary.json and the weights: adapter_config.json and
    adapter_model.safetensors (LoRA), or model.safetensors, the whole state dict (full fine-tuning). A
    README.md already there (the model card) is left alone.
    """
    start = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    lm = load_model()
    lm.model.to(device)

    def stage(name: str) -> Progress | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    harmful = harmful_data(config.seed, config.question_forms)
    benign = benign_data(lm, config.answer_tokens, cache, config.seed, stage("benign answers"))
    assert_disjoint([e.prompt for e in [*harmful, *benign]])
    data_time = time.perf_counter() - start
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn in `trainable`
    model = trainable(lm.model, config)
    losses = train(model, lm.tokenizer, harmful, benign, config, stage("training"))
    train_time = time.perf_counter() - start - data_time
    weights = save_weights(model, config, Path(output_dir), lm.provenance["model"])
    summary = {
        "config": asdict(config),
        "base_model": lm.provenance,
        "data": dict(Counter(e.source for e in [*harmful, *benign]))
        | {"benign_unfinished": sum(not e.finished for e in benign)},
        "loss_first10": sum(losses[:10]) / len(losses[:10]),
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
        "losses": [round(x, 4) for x in losses],
        "seconds": {"data": round(data_time, 1), "train": round(train_time, 1)},
        "weights": weights.name,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    (Path(output_dir) / "align_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# --- Command line (wired by cli.py) ------------------------------------------------------------------

_HELP = {
    "seed": "seed for data sampling, LoRA init and dropout",
    "steps": "optimiser steps",
    "batch_size": "examples per step",
    "benign_share": "share of each batch that is benign",
    "lr": "peak learning rate",
    "warmup": "warm-up steps",
    "weight_decay": "AdamW weight decay",
    "rank": "LoRA rank",
    "alpha": "LoRA alpha",
    "dropout": "LoRA dropout",
    "targets": "comma-separated module names, or 'attention' / 'all-linear'",
    "answer_tokens": "max new tokens of the un-tuned model's benign answers",
    "max_len": "max tokens of a training sequence",
    "method": "lora (an adapter on --targets) or full (every weight; writes model.safetensors)",
    "question_forms": "question forms of each AdvBench prompt, besides the prompt as written",
}


def _targets(text: str) -> tuple[str, ...]:
    presets = {"attention": ATTENTION, "all-linear": ALL_LINEAR}
    return presets.get(text, tuple(t.strip() for t in text.split(",") if t.strip()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `align` subcommand's arguments: --out, one flag per AlignConfig field, --threads."""
    parser.add_argument("--out", type=Path, required=True, help="folder for the adapter")
    default = AlignConfig()
    for f in fields(AlignConfig):
        value = getattr(default, f.name)
        kind = _targets if f.name == "targets" else type(value)
        shown = ",".join(value) if f.name == "targets" else value
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=kind,
            default=value,
            help=f"{_HELP[f.name]} (default: {shown})",
        )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    parser.add_argument("--no-cache", action="store_true", help="regenerate the un-tuned model's benign answers")


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = AlignConfig(**{f.name: getattr(args, f.name) for f in fields(AlignConfig)})
    bars: dict = {}

    def progress(name: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if name not in bars:  # not setdefault: that would open a new bar on every call
            bars[name] = tqdm(desc=name, total=total)
        bar = bars[name]
        bar.n = done
        bar.refresh()

    summary = align(
        args.out,
        config,
        cache=None if args.no_cache else RUNS_DIR / "benign_answers.json",
        device=args.device,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=1))
