"""Checks a bench/run --json file: a non-empty list of rows with the documented fields."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

KEYS = {"scenario", "target", "metric", "value", "baseline", "ratio"}


def problem(row: object) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict) or set(row) != KEYS:
        return "fields differ from " + ", ".join(sorted(KEYS))
    if not all(isinstance(row[k], str) and row[k] for k in ("scenario", "target", "metric")):
        return "scenario, target and metric must be non-empty strings"
    if not isinstance(row["value"], int | float) or not math.isfinite(row["value"]):
        return "value must be a finite number"
    optional = (row["baseline"], row["ratio"])
    if any(v is not None and not isinstance(v, int | float) for v in optional):
        return "baseline and ratio must be numbers or null"
    return None


def main(path: str) -> None:
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not rows:
        sys.exit(f"{path}: expected a non-empty list of rows")
    for row in rows:
        if (why := problem(row)) is not None:
            sys.exit(f"{path}: {why}: {row}")
    targets = {row["target"] for row in rows}
    if not {"baseline", "embedded", "stack"} <= targets:
        sys.exit(f"{path}: missing targets; got {sorted(targets)}")
    print(f"{path}: {len(rows)} rows, valid")


if __name__ == "__main__":
    main(sys.argv[1])
