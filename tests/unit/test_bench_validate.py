"""bench/validate.py fails a row measured on failures (issue 16: a bench that can fail)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_validate", ROOT / "bench" / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = load_validate()


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": "GET /v1/user (authenticated)",
        "target": "embedded",
        "metric": "req/s",
        "value": 5000.0,
        "baseline": None,
        "ratio": None,
        "requests": 10_000,
        "errors": 0,
        "non2xx": 0,
        "rejections": False,
    }
    return {**base, **changes}


def test_clean_rows_and_rows_not_from_wrk_pass() -> None:
    assert validate.problem(row()) is None
    assert validate.problem(row(errors=50, non2xx=50)) is None  # exactly 1 %
    assert validate.problem(row(requests=None, errors=None, non2xx=None)) is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"non2xx": 101}, "over 1%"),
        ({"errors": 60, "non2xx": 41}, "over 1%"),
        ({"requests": 0}, "no answer"),
        ({"errors": None}, "must all be counts"),
        ({"rejections": "yes"}, "true or false"),
    ],
)
def test_rows_measured_on_failures_fail(changes: dict[str, Any], why: str) -> None:
    problem = validate.problem(row(**changes))
    assert problem is not None
    assert why in problem


def test_rows_that_measure_rejections_are_exempt() -> None:
    assert validate.problem(row(non2xx=10_000, rejections=True)) is None


def test_main_exits_on_a_bad_row(tmp_path: Path) -> None:
    rows = [row(target=t) for t in ("baseline", "embedded", "stack")]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(rows))
    validate.main(str(good))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([*rows, row(non2xx=5000)]))
    with pytest.raises(SystemExit, match="1 bad rows"):
        validate.main(str(bad))
