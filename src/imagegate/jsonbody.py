"""Parsing a JSON request body that a client controls: strict UTF-8, bounded nesting, and no
text that cannot be encoded again (lone surrogates). Anything else is a 400, never a 500.

For routes that read their body themselves (``json.loads`` alone lets a lone ``\\ud800`` through
to whatever encodes it next, and turns deep nesting into a RecursionError)::

    body = parse_json(await request.body())
"""

from __future__ import annotations

import json
import re
from typing import Any

from imagegate.errors import BadRequest

MAX_DEPTH = 32  # our bodies are flat objects; 32 leaves room without inviting recursion
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``raw``; BadRequest for invalid UTF-8 or JSON, nesting deeper than
    ``max_depth``, or strings (keys included) holding lone surrogates."""
    try:
        text = raw.decode("utf-8")  # strict: rejects invalid bytes and encoded surrogates
    except UnicodeDecodeError as exc:
        raise BadRequest("body is not valid UTF-8") from exc
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise BadRequest(f"JSON nested deeper than {max_depth} levels") from exc
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    check_json_value(value, max_depth=max_depth)
    return value


def check_json_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """BadRequest if ``value`` (parsed JSON) nests deeper than ``max_depth`` or holds a string
    that is not valid Unicode. Iterative: the check itself cannot recurse too deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadRequest("JSON string is not valid Unicode (a lone surrogate)")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise BadRequest(f"JSON nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
