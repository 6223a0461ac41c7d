"""Fill in the attempt rate (`safety_heads.judge.attempts`) of summary rows made before the column, from the
answers and surprise values the grid stored beside them; nothing is generated again.

Each row's coherent ASR is recomputed from the same answers first and must equal the stored one, so a row is
only filled from the answers that made it. Rows that have an attempt rate are left as they are.

Usage: python bench/judge/attempt_rates.py precomputed/<model>/summary.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safety_heads.coherence import with_surprise
from safety_heads.judge import RefusalJudge, attack_success
from safety_heads.provenance import write_json


def answers_by_key(folder: Path) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines() if line.strip()]
    return {(r["set"], r["mode"], tuple(sorted(tuple(h) for h in r["heads"]))): r for r in rows}


def refused(folder: Path, n: dict[str, int]) -> dict[str, list[int]]:
    """Per set, the refused rows the grid read (behaviour.json's, within the set's n)."""
    sets = json.loads((folder / "behaviour.json").read_text())["sets"] if (folder / "behaviour.json").is_file() else {}
    return {name: [i for i in rec["refused_rows"] if i < n.get(name, n["*"])] for name, rec in sets.items()}


def fill(path: Path) -> tuple[int, int]:
    """(rows filled, rows already there) for one summary.json."""
    summary = json.loads(path.read_text())
    settings = summary["settings"]
    n = {"*": settings["n"]} | {name: settings.get("held_out_n", settings["n"]) for name in ("advbench",)}
    answers, subsets = answers_by_key(path.parent), refused(path.parent, n)
    limit, judge = summary["coherence"]["limit"], RefusalJudge()
    filled = kept = 0
    for row in summary["ablations"]:
        if row.get("attempt_rate") is not None:
            kept += 1
            continue
        heads = tuple(sorted(tuple(h) for h in row["heads"]))
        stored = answers[(row["evaluated_on"], row["mode"] if heads else "-", heads)]
        verdicts = [with_surprise(judge(a), s, limit) for a, s in zip(stored["answers"], stored["surprise"])]
        if row.get("subset", "all") == "refused":
            verdicts = [verdicts[i] for i in subsets[row["evaluated_on"]]]
        result = attack_success(verdicts)
        if abs(result.coherent_asr - row["coherent_asr"]) > 1e-9:
            raise SystemExit(f"{path}: {row} is not reproduced by its stored answers ({result.coherent_asr})")
        row["attempt_rate"] = result.attempt_rate
        filled += 1
    write_json(path, summary)
    return filled, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", type=Path, nargs="+")
    for path in parser.parse_args().summaries:
        filled, kept = fill(path)
        print(f"{path}: {filled} rows filled, {kept} had an attempt rate")


if __name__ == "__main__":
    main()
