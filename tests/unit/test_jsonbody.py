"""Parsing client JSON: strict UTF-8, bounded nesting, no lone surrogates; 400 for the rest."""

from __future__ import annotations

import pytest

from imagegate.errors import BadRequest
from imagegate.jsonbody import MAX_DEPTH, parse_json


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_ordinary_bodies_parse() -> None:
    assert parse_json(b'{"login": "bob", "password": "\\u00e9t\\u00e9 \\ud83d\\ude00"}') == {
        "login": "bob",
        "password": "\u00e9t\u00e9 \U0001f600",  # a surrogate pair is one valid character
    }
    assert parse_json(_nested(MAX_DEPTH)) is not None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_nested(MAX_DEPTH + 1), "nested deeper"),
        (_nested(100_000), "nested deeper"),  # the parser itself would recurse too deep
        (b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nested deeper"),
        (b'{"password": "\\ud800"}', "surrogate"),
        (b'{"password": "x\\udfffy"}', "surrogate"),
        (b'{"\\ud800": "x"}', "surrogate"),
        (b'[[["\\udc80"]]]', "surrogate"),
        (b'{"password": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded as UTF-8 bytes
        (b'{"password": "\xff"}', "UTF-8"),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[" + b"9" * 5000 + b"]", "not valid JSON"),  # over Python's integer digit limit
    ],
)
def test_bad_bodies_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as exc:
        parse_json(raw)
    assert exc.value.status == 400
