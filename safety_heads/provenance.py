"""Where a result came from: the code's version, the prompt set's file and hash; files written atomically."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from . import __version__
from .datasets import resolve
from .models import sha256_file


def code_version() -> str:
    """The package version and, inside a git checkout, its commit (with "+dirty" for local changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "safety_heads"], cwd=root, capture_output=True, text=True
        )
        return f"{__version__}+{commit.stdout.strip()[:12]}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.CalledProcessError):
        return __version__


def prompt_set_provenance(name: str, n: int | None) -> dict:
    path, column = resolve(name)
    return {"name": name, "file": path.name, "sha256": sha256_file(path), "column": column, "n": n}


def write_json(path: Path, record: dict) -> None:
    """Write a JSON file whole or not at all (a temporary file, then a rename): long runs checkpoint into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
