"""Fill in the attempt rate (`safety_heads.judge.attempts`) of summary rows made before the column, from the
answers and surprise values the grid stored beside them; nothing is generated again.

Each row's coherent ASR is recomputed from the same answers first and must equal the stored one, so a row is
only filled from the answers that made it. Rows that have an attempt rate are left as they are.

Usage: python bench/judge/attempt_rates.py precomputed/<model>/summary.json ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safety_heads.evaluation import StoredGrid
from safety_heads.judge import attack_success
from safety_heads.provenance import write_json


def fill(path: Path) -> tuple[int, int]:
    """(rows filled, rows already there) for one summary.json."""
    grid = StoredGrid(path.parent)
    summary = grid.summary
    filled = kept = 0
    for row in summary["ablations"]:
        if row.get("attempt_rate") is not None:
            kept += 1
            continue
        result = attack_success(grid.verdicts(row))
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
