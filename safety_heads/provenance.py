"""Where a result came from: the code's version, the prompt set's file and hash; files written atomically."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from . import __version__
from .datasets import resolve
from .packaged import sha256_file

REPO_DIR = Path(__file__).resolve().parent.parent


def code_version() -> str:
    """The package version and, inside a git checkout, its commit: "0.1.0+<12 hex digits of the commit>", with
    ".dirty" appended when files of the package (`safety_heads/`, tracked or new) differ from that commit.

    A string, as every file in precomputed/ records it, so old and new records compare as they are. Only the
    package counts as dirty: every number comes from its code, while tests, docs and notes change nothing.
    """
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--", "safety_heads")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (a Space's copy, an installed wheel)
        return __version__
    return f"{__version__}+{commit[:12]}{'.dirty' if dirty else ''}"


def _git(*args: str) -> str:
    run = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=5, check=True)
    return run.stdout.strip()


def prompt_set_provenance(name: str, n: int | None) -> dict:
    path, column = resolve(name)
    return {"name": name, "file": path.name, "sha256": sha256_file(path), "column": column, "n": n}


def write_json(path: Path, record: dict) -> None:
    """Write a JSON file whole or not at all (a temporary file, then a rename): long runs checkpoint into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
