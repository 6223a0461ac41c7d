"""The settings of the long runs, typed and described once: `precompute` (attribution, group searches and the
cross-set grid) and `behaviour` (the intact model on whole sets).

The command line is made from these dataclasses (a field's description is its `--help`), so the CLI builds
one object and the library reads typed fields, never an argparse namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .ablation import DEFAULT_EPS, MODES, Mode
from .datasets import HARMFUL_SETS
from .models import TEMPLATES, Template, default_model
from .precomputed import PRECOMPUTED_DIR
from .rankings import REGISTRY
from .runtime import RUNTIMES, runtime_help


def setting(
    description: str,
    default: Any = dataclasses.MISSING,
    *,
    flag: str | None = None,
    choices: typing.Sequence | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A described field; `flag` where the option is not `--the-field-name`."""
    metadata = {"help": description, "flag": flag, "choices": choices}
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass(frozen=True)
class Invocation:
    """What started a run, recorded beside its results: the command line and the code's version, read once."""

    command: str
    code_version: str


@dataclass
class ModelSettings:
    model: str = setting("catalog name, hub id or local folder", factory=default_model)
    runtime: str | None = setting(runtime_help(), None, choices=list(RUNTIMES))
    template: Template = setting("how a prompt is put to the model", "chat", choices=TEMPLATES)
    out: Path = setting("the precomputed/ folder results are read from and written to", PRECOMPUTED_DIR)
    benign: str = setting(
        "benign prompt set: the refusal score's penalty and the coherence calibration", "alpaca_seed_tasks"
    )
    n_benign: int = setting("benign prompts", 50)


@dataclass
class PrecomputeSettings(ModelSettings):
    device: str = setting("where the model runs", factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    sets: tuple[str, ...] = setting("harmful prompt sets to attribute on", HARMFUL_SETS)
    heads_from: tuple[str, ...] | None = setting("of --sets, only these give heads (one direction)", None)
    held_out: tuple[str, ...] = setting(
        "sets the heads are also answered on but never found on (generalization, e.g. advbench)", ()
    )
    held_out_n: int = setting("prompts of each --held-out set", 200)
    modes: tuple[Mode, ...] = setting("ablation modes", MODES, choices=MODES)
    n: int = setting("harmful prompts per set", 100, flag="-n")
    refused: bool = setting("the first n prompts the intact model refuses (from `behaviour`)", False)
    eps: float = setting("ablation scale, in (0, 1]", DEFAULT_EPS)
    rank: int = setting("r: singular vectors compared by generalized Ships and Sahara", 1)
    sahara_size: int = setting("Sahara's group size (0: no Sahara)", 3)
    group_size: int = setting("our refusal group's size (0: none)", 5)
    patching_group_size: int = setting("the activation-patching group's size (0: none)", 5)
    group_candidates: int = setting("shortlist of the refusal and patching group searches", 32)
    group_n: int = setting("harmful prompts the group searches run on", 16)
    group_n_benign: int = setting("benign prompts the refusal and patching groups run on", 8)
    batch_size: int = setting("ablations per forward pass in the sweeps", 64)
    evaluate: bool = setting("also measure the ablations' ASR (summary.json)", False)
    reuse: bool = setting("evaluate the heads of the files already in --out", False)
    search_groups: bool = setting("with --reuse: run the group searches on those files", False)
    add_scores: bool = setting(
        "with --reuse: add the rankings of --rankings with a scoring function of their own (e.g. the refusal "
        "direction) that those files lack",
        False,
    )
    ks: tuple[int, ...] = setting("head counts, run in this order", (3, 1, 5))
    rankings: tuple[str, ...] = setting("rankings to evaluate", tuple(REGISTRY))
    random_draws: int = setting("random head sets per k (the control)", 3)
    random_outside_top: int = setting(
        "also draw each random set outside every ranking's top N heads on the set (0: only the unrestricted draw)",
        10,
    )
    max_new_tokens: int = setting("greedy tokens per answer in the grid", 64)
    xstest_per_type: int = setting("XSTest-safe prompts per type (10 types)", 5)
    gen_batch_size: int = setting("prompts per generate call in the grid", 32)

    def head_sets(self) -> tuple[str, ...]:
        """The prompt sets whose heads are found and evaluated: --heads-from, else every set."""
        if self.heads_from and not set(self.heads_from) <= set(self.sets):
            raise SystemExit(
                f"--heads-from {' '.join(self.heads_from)}: each must be one of --sets {' '.join(self.sets)}"
            )
        return self.heads_from or self.sets


@dataclass
class BehaviourSettings(ModelSettings):
    sets: tuple[str, ...] = setting("prompt sets to answer", (*HARMFUL_SETS, "xstest_safe"))
    n: int | None = setting("first N prompts of each set (default: all)", None, flag="-n")
    max_new_tokens: int = setting("greedy tokens per answer", 128)
    batch_size: int = setting("prompts per generate call", 32)
    calibration_tokens: int = setting("length of the sampled benign answers the coherence limit is set on", 64)


S = TypeVar("S", bound=ModelSettings)


def add_arguments(parser: argparse.ArgumentParser, cls: type[ModelSettings]) -> None:
    """One option per field, its description as help; defaults are filled in by `from_args`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, many = _base_type(hints[f.name])
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        described = f.metadata["help"] + ("" if default in (None, False) else f" (default: {shown})")
        options: dict[str, Any] = {"dest": f.name, "help": described, "default": argparse.SUPPRESS}
        if kind is bool:
            options["action"] = "store_true"
        else:
            options |= {"type": kind, "nargs": "+" if many else None, "choices": f.metadata["choices"]}
        parser.add_argument(flag, **options)


def from_args(cls: type[S], args: argparse.Namespace) -> S:
    """The settings a parsed command line gives: the options it names, the defaults for the rest."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values: dict[str, Any] = {name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}
    return cls(**values)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the type of one value, whether the option takes several) of a field's annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _base_type(args[0])
    if typing.get_origin(hint) is tuple:
        return _base_type(args[0])[0], True
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0]), False
    return hint, False
