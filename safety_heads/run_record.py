"""Export: the record of one intact-vs-ablated comparison, with everything needed to reproduce it."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .ablation import Head, Mode, format_head
from .answers import DecodingConfig
from .judge import Verdict
from .models import LoadedModel, Template
from .provenance import code_version


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
        "space": os.environ.get("SPACE_ID"),  # the Hugging Face Space that ran it, if any
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
