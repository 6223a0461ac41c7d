"""Alignment: a seeded recipe that teaches SmolLM2-135M-Instruct to refuse harmful requests (an experiment).

The un-tuned model refuses almost nothing, so there are no safety heads to find in it. This script trains
either a small LoRA adapter (the default; attention projections only: the paper reads safety heads as feature
extractors, so the refusal must then be read out through attention) or, with `method="full"`, every weight
of the model, which is closer to how real chat models are aligned. Both learn from harmful requests
answered by refusals and benign ones answered by the un-tuned model itself (`align_data`). The loss covers
only the answer tokens. It uses the library's public API only; run it from the repository root:

    python -m experiments.smollm2_safety.align --out experiments/smollm2_safety/adapters/smollm2-safety

README.md beside this file tells what came of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
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

from safety_heads.models import FULL_WEIGHTS, SMOLLM2_135M, format_prompt, load_model

from .align_data import Example, Progress, assert_disjoint, benign_data, harmful_data

RUNS_DIR = Path(__file__).resolve().parents[2] / "runs" / "align"  # the repository's runs/, gitignored
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")
IGNORE = -100  # label of the tokens the loss skips (prompt and padding)
METHODS = ("lora", "full")


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
    """Train the safety adapter on the un-tuned SmolLM2-135M and save it; returns a summary.

    output_dir receives align_summary.json and the weights: adapter_config.json and
    adapter_model.safetensors (LoRA), or model.safetensors, the whole state dict (full fine-tuning). A
    README.md already there (the model card) is left alone.
    """
    start = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    lm = load_model(SMOLLM2_135M)
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


# --- Command line ------------------------------------------------------------------------------------

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
    """The script's arguments: --out, one flag per AlignConfig field, --threads, --device, --no-cache."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.smollm2_safety.align",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
