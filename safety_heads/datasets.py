"""Prompt sets, read from a folder outside the repository (never copied into it).

Known sets are looked up in $SAFETY_HEADS_DATASETS, else in ../shared/datasets beside the repository;
any CSV or JSONL path works too, with the column to read.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

# name -> (file, column); the harmful sets are for attribution and ASR, xstest_safe for over-refusal.
KNOWN_SETS: dict[str, tuple[str, str]] = {
    "jailbreakbench": ("jailbreakbench.csv", "input"),
    "maliciousinstruct": ("maliciousinstruct.csv", "input"),
    "advbench": ("advbench.csv", "input"),
    "xstest_safe": ("xstest_safe.csv", "prompt"),
    "alpaca_seed_tasks": ("alpaca_seed_tasks.jsonl", "instruction"),
}
HARMFUL_SETS = ("jailbreakbench", "maliciousinstruct")


def datasets_dir() -> Path:
    env = os.environ.get("SAFETY_HEADS_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def resolve(name_or_path: str | Path) -> tuple[Path, str | None]:
    """(file path, default column) for a known set name or a path."""
    if str(name_or_path) in KNOWN_SETS:
        file, column = KNOWN_SETS[str(name_or_path)]
        return datasets_dir() / file, column
    return Path(name_or_path), None


def load_stratified(name_or_path: str | Path, by: str, per_group: int) -> list[str]:
    """The first `per_group` prompts of each value of column `by` (e.g. 5 per XSTest type), in file order."""
    path, column = resolve(name_or_path)
    rows = _read_rows(path, name_or_path)
    if rows and by not in rows[0]:
        raise ValueError(f"{path} has no column {by!r}; columns: {', '.join(rows[0])}")
    taken: dict[str, int] = {}
    prompts = []
    for row in rows:
        if taken.get(row[by], 0) < per_group and str(row.get(column or "input") or "").strip():
            taken[row[by]] = taken.get(row[by], 0) + 1
            prompts.append(str(row[column or "input"]).strip())
    return prompts


def load_prompts(name_or_path: str | Path, column: str | None = None, n: int | None = None) -> list[str]:
    """The first n non-empty prompts of a known set or of a CSV / JSONL file."""
    path, default_column = resolve(name_or_path)
    column = column or default_column or "input"
    rows = _read_rows(path, name_or_path)
    if rows and column not in rows[0]:
        raise ValueError(f"{path} has no column {column!r}; columns: {', '.join(rows[0])}")
    prompts = [str(row[column]).strip() for row in rows if str(row.get(column) or "").strip()]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be at least 1; got {n}")
        prompts = prompts[:n]
    return prompts


def _read_rows(path: Path, name_or_path: str | Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Prompt set {name_or_path!r} not found at {path} (set SAFETY_HEADS_DATASETS or pass a path)"
        )
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: expected a .csv or .jsonl file")
