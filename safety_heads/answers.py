"""Answers: the intact and the ablated model respond to the same prompt in one batched `generate` call.

Rows of a batch carry their own head sets (see `ablation.ablate(per_row=True)`), so the intact answer
(row 0, no heads) and the ablated one (row 1) share one KV-cached decoding loop, and a whole prompt set is
answered under one ablation in batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from transformers import GenerationMixin, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .ablation import DEFAULT_EPS, Head, Mode, ablate
from .models import LoadedModel, Template, decode, encode

MAX_NEW_TOKENS = 512
Decoding = Literal["greedy", "top-k"]


@dataclass(frozen=True)
class DecodingConfig:
    strategy: Decoding = "greedy"
    max_new_tokens: int = 128
    top_k: int = 50
    temperature: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be 1-{MAX_NEW_TOKENS}; got {self.max_new_tokens}")
        if self.strategy not in ("greedy", "top-k"):
            raise ValueError(f"Unknown decoding {self.strategy!r}; choose greedy or top-k")

    def generate_kwargs(self) -> dict:
        if self.strategy == "greedy":
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {
            "do_sample": True,
            "top_k": self.top_k,
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
        }


class RowStreamer(BaseStreamer):
    """Collects the new tokens of every batch row and hands out the decoded texts after each step."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, n_rows: int):
        self.tokenizer = tokenizer
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        self.updates: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt itself
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            self.tokens[row].append(token)
        self.updates.put(self.texts())

    def end(self) -> None:
        self.updates.put(None)

    def texts(self) -> list[str]:
        return [decode(self.tokenizer, t, skip_special_tokens=True) for t in self.tokens]


class StopWhenSet(StoppingCriteria):
    """Ends every row of a generation once its event is set (the streaming consumer has gone)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    head_sets: Sequence[Sequence[Head]],
    mode: Mode,
    eps: float,
    template: Template,
    decoding: DecodingConfig,
    streamer: BaseStreamer | None = None,
    stop: threading.Event | None = None,
) -> list[str]:
    batch = encode(lm, list(prompts), template, decoding.max_new_tokens)
    prompt_len = batch["input_ids"].shape[1]
    with ablate(lm, head_sets, mode, eps, per_row=True), torch.no_grad():
        if decoding.strategy == "top-k":
            torch.manual_seed(decoding.seed)
        # Every causal LM class mixes in GenerationMixin; PreTrainedModel, as LoadedModel types it, does not.
        out = cast(GenerationMixin, lm.model).generate(
            **batch,
            **decoding.generate_kwargs(),
            pad_token_id=lm.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopWhenSet(stop)]) if stop else None,
        )
    return [decode(lm.tokenizer, row[prompt_len:], skip_special_tokens=True).strip() for row in out]


def generate_pair(
    lm: LoadedModel,
    prompt: str,
    heads: Sequence[Head],
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    template: Template = "chat",
    decoding: DecodingConfig = DecodingConfig(),
) -> tuple[str, str]:
    """(intact answer, ablated answer) to one prompt, from one batched generate call."""
    intact, ablated = _generate(lm, [prompt, prompt], [[], list(heads)], mode, eps, template, decoding)
    return intact, ablated


def stream_pair(
    lm: LoadedModel,
    prompt: str,
    heads: Sequence[Head],
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    template: Template = "chat",
    decoding: DecodingConfig = DecodingConfig(),
) -> Iterator[tuple[str, str]]:
    """Like generate_pair, yielding (intact so far, ablated so far) after every decoding step.

    Generation runs in a worker thread; an exception there is re-raised here, and the ablation context
    inside the worker removes its hooks whatever happens. If the consumer stops early (a client that leaves
    closes this generator), the worker stops after its current step and frees the model for the next request.
    """
    encode(lm, [prompt], template, decoding.max_new_tokens)  # fail fast, before the thread starts
    streamer = RowStreamer(lm.tokenizer, 2)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _generate(lm, [prompt, prompt], [[], list(heads)], mode, eps, template, decoding, streamer, stop)
        except BaseException as err:  # handed to the consumer below
            errors.append(err)
            streamer.end()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (texts := streamer.updates.get()) is not None:
            yield texts[0].strip(), texts[1].strip()
    finally:
        stop.set()
    worker.join()
    if errors:
        raise errors[0]


def generate_many(
    lm: LoadedModel,
    prompts: Sequence[str],
    heads: Sequence[Head] = (),
    mode: Mode = "UA",
    eps: float = DEFAULT_EPS,
    template: Template = "chat",
    decoding: DecodingConfig = DecodingConfig(),
    batch_size: int = 16,
    progress=None,
) -> list[str]:
    """Answers to many prompts under one ablation, in batches."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        answers += _generate(lm, chunk, [list(heads)] * len(chunk), mode, eps, template, decoding)
        if progress:
            progress(len(answers), len(prompts))
    return answers
