"""Checks a bench/run --json file: a non-empty list of rows with the documented fields, and
numbers that were measured on answers, not on failures.

A row from a load run carries its counts: ``requests`` (answers), ``errors`` (wrk's socket
errors: connect, read, write, timeout) and ``non2xx`` (answers other than 2xx/3xx). A row fails
when its errors and non-2xx answers together exceed ``MAX_FAILED_FRACTION`` of its requests, or
when its run got no answer at all: a rate computed on refusals or resets measures the failure,
not the service. Rows marked ``rejections`` measure refusals on purpose and are exempt. Rows
marked ``lossless`` count deliveries that must all arrive (events: ``requests`` sent, ``errors``
lost): any error or non-2xx fails them. (Files written before that field existed lack it.)

A full run has rows for the baseline, embedded and stack targets; a partial one (``--only``)
may have fewer, but every target must be one of those and at least one row must measure
imagegate itself (embedded or stack), not only its baselines.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

KEYS = {
    "scenario",
    "target",
    "metric",
    "value",
    "baseline",
    "ratio",
    "requests",
    "errors",
    "non2xx",
    "rejections",
}
OPTIONAL_KEYS = {"lossless"}
TARGETS = {"baseline", "embedded", "stack"}
COUNTS = ("requests", "errors", "non2xx")
MAX_FAILED_FRACTION = 0.01


def problem(row: object) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict) or not KEYS <= set(row) <= KEYS | OPTIONAL_KEYS:
        return "fields differ from " + ", ".join(sorted(KEYS | OPTIONAL_KEYS))
    if not all(isinstance(row[k], str) and row[k] for k in ("scenario", "target", "metric")):
        return "scenario, target and metric must be non-empty strings"
    if not isinstance(row["value"], int | float) or not math.isfinite(row["value"]):
        return "value must be a finite number"
    optional = (row["baseline"], row["ratio"])
    if any(v is not None and not isinstance(v, int | float) for v in optional):
        return "baseline and ratio must be numbers or null"
    if not isinstance(row["rejections"], bool):
        return "rejections must be true or false"
    if not isinstance(row.get("lossless", False), bool):
        return "lossless must be true or false"
    if row["target"] not in TARGETS:
        return "target must be one of " + ", ".join(sorted(TARGETS))
    counts = [row[k] for k in COUNTS]
    if all(c is None for c in counts):
        return None  # not from a load run (a Pillow or Argon2 loop, a codec worker)
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return "requests, errors and non2xx must all be counts (or all null)"
    if row["rejections"]:
        return None
    requests, errors, non2xx = counts
    if requests == 0:
        return "its load run got no answer"
    failed = errors + non2xx
    if row.get("lossless") and failed:
        return f"{errors} lost and {non2xx} failed of {requests}: every one must arrive"
    if failed > MAX_FAILED_FRACTION * requests:
        return (
            f"{errors} socket errors and {non2xx} non-2xx/3xx answers in {requests} requests: "
            f"over {MAX_FAILED_FRACTION:.0%}"
        )
    return None


def main(path: str) -> None:
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not rows:
        sys.exit(f"{path}: expected a non-empty list of rows")
    bad = [f"{why}: {row}" for row in rows if (why := problem(row)) is not None]
    if bad:
        sys.exit(f"{path}: {len(bad)} bad rows\n" + "\n".join(bad))
    targets = {row["target"] for row in rows}
    if not targets & {"embedded", "stack"}:
        sys.exit(f"{path}: no row measures imagegate (only {sorted(targets)})")
    print(f"{path}: {len(rows)} rows, valid")


if __name__ == "__main__":
    main(sys.argv[1])
