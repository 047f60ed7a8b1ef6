"""Malformed input on every parser path: a 4xx with the JSON error shape, never a 5xx.

JSON bodies (nesting, invalid Unicode, odd values), listing cursors, query parameters, Range
headers, multipart bodies, names and headers. Only the HTTP API is used, so this suite also runs
through the gateway; against a server it started, it also checks that none of this logged a
traceback (the access log's one line per request is all).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Account, Target, register_and_login
from tests.support import images

JSON = {"Content-Type": "application/json"}


def assert_error(r: httpx.Response, *statuses: int) -> None:
    """A client error (one of ``statuses`` when given) in the one error shape."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]


@pytest.fixture(scope="module")
def user(target: Target) -> Account:
    """One account for the module: through a gateway, registrations and logins are
    rate-limited per address, and this module sends many malformed ones already."""
    with target.client() as c:
        return register_and_login(c)


@pytest.fixture(scope="module", autouse=True)
def no_tracebacks(target: Target) -> Iterator[None]:
    """Against a server we started: nothing in this module logs a traceback."""
    logs = sorted(target.data_dir.parent.glob("server-*.log")) if target.data_dir else []
    offsets = {log: log.stat().st_size for log in logs}
    yield
    for log, offset in offsets.items():
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        assert "Traceback" not in text, text[-4000:]


# --- JSON bodies --------------------------------------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


MALFORMED_JSON: dict[str, bytes] = {
    "nested 1000 deep": _deep(1000).encode(),
    "nested 20000 deep": _deep(20000).encode(),
    "deep in a field": ('{"login": ' + _deep(1000) + ', "password": "x"}').encode(),
    "deep objects": ('{"a": ' * 1000 + "1" + "}" * 1000).encode(),
    "lone surrogate in password": b'{"login": "abcdef", "password": "\\ud800 long enough pw"}',
    "lone surrogate in login": b'{"login": "abc\\udfff", "password": "long enough password"}',
    "lone surrogate in a key": b'{"login": "abcdef", "password": "long enough pw", "\\ud800": 1}',
    "surrogate as UTF-8 bytes": b'{"login": "abcdef", "password": "\xed\xa0\x80 long enough"}',
    "invalid UTF-8": b'{"login": "abcdef", "password": "\xff\xfe long enough pw"}',
    "huge integer": b'{"login": ' + b"9" * 5000 + b', "password": "long enough pw"}',
    "NaN": b'{"login": NaN, "password": "long enough pw"}',
    "not JSON": b"login=abcdef&password=x",
    "truncated": b'{"login": "abcdef", "password": "lo',
    "empty": b"",
    "null": b"null",
    "a list": b'["abcdef", "long enough pw"]',
    "a string": b'"abcdef"',
    "a number": b"12",
    "wrong types": b'{"login": 12, "password": ["x"]}',
    "NUL in login": b'{"login": "abc\\u0000def", "password": "long enough password"}',
}


@pytest.mark.parametrize("case", sorted(MALFORMED_JSON))
def test_malformed_registration(client: httpx.Client, case: str) -> None:
    assert_error(client.post("/v1/register", content=MALFORMED_JSON[case], headers=JSON))


@pytest.mark.parametrize(
    "case", ["nested 20000 deep", "lone surrogate in password", "huge integer"]
)
def test_malformed_registration_on_the_other_path(client: httpx.Client, case: str) -> None:
    assert_error(client.post("/v1/user", content=MALFORMED_JSON[case], headers=JSON))


# Well-formed credentials that fail would be counted as failed logins and throttle this address.
NOT_LOGIN_CASES = {"NUL in login"}


@pytest.mark.parametrize("case", sorted(set(MALFORMED_JSON) - NOT_LOGIN_CASES))
def test_malformed_login(client: httpx.Client, case: str) -> None:
    # 400 from the route; 429 from a gateway's rate limit on logins.
    assert_error(client.post("/v1/token", content=MALFORMED_JSON[case], headers=JSON), 400, 429)


@pytest.mark.parametrize("path", ["/v1/register", "/v1/user", "/v1/token"])
def test_json_under_another_content_type(client: httpx.Client, path: str) -> None:
    body = b'{"login": "abc\\ud800", "password": "\\ud800\\udfff long enough"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "nonsense"):
        r = client.post(path, content=body, headers={"Content-Type": content_type})
        assert_error(r)


# --- listing cursors and query parameters ---------------------------------------------


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _raw_cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED_CURSORS: dict[str, str] = {
    "timestamp without a zone": _cursor(["2020-01-01T00:00:00", "x.jpg"]),
    "date only": _cursor(["2020-01-01", "x.jpg"]),
    "null timestamp": _cursor([None, "x.jpg"]),
    "null name": _cursor(["2020-01-01T00:00:00+00:00", None]),
    "list name": _cursor(["2020-01-01T00:00:00+00:00", ["x"]]),
    "list timestamp": _cursor([["2020"], "x.jpg"]),
    "number timestamp": _cursor([1577836800, "x.jpg"]),
    "object": _cursor({"created": "2020-01-01T00:00:00+00:00", "name": "x.jpg"}),
    "three items": _cursor(["2020-01-01T00:00:00+00:00", "x.jpg", 3]),
    "one item": _cursor(["2020-01-01T00:00:00+00:00"]),
    "a string": _cursor("cursor"),
    "null": _cursor(None),
    "year 1 east of UTC": _cursor(["0001-01-01T00:00:00+14:00", "x.jpg"]),
    "year 9999 west of UTC": _cursor(["9999-12-31T23:59:59-14:00", "x.jpg"]),
    "not a date": _cursor(["yesterday", "x.jpg"]),
    "surrogate in the name": _raw_cursor(b'["2020-01-01T00:00:00+00:00", "\\ud800"]'),
    "non-ASCII name": _cursor(["2020-01-01T00:00:00+00:00", "\u00e9t\u00e9.jpg"]),
    "deep nesting": _raw_cursor(b"[" * 300),
    "invalid UTF-8": _raw_cursor(b'["\xff\xfe", "x"]'),
    "not base64": "!!!not-base64!!!",
    "non-ASCII": "\u00e9\u00e9\u00e9",
    "NUL": "\x00",
    "over the length limit": "A" * 600,
}


@pytest.mark.parametrize("case", sorted(FORGED_CURSORS))
def test_forged_cursor_is_422(client: httpx.Client, user: Account, case: str) -> None:
    r = client.get("/v1/images", params={"cursor": FORGED_CURSORS[case]}, headers=user.auth)
    assert_error(r, 422)


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=0",
        "limit=-1",
        "limit=1e3",
        "limit=99999999999999999999999999",
        "limit=",
        "limit=%00",
        "limit=%ff",
        "limit=1&limit=x",
    ],
)
def test_bad_listing_parameters_are_422(client: httpx.Client, user: Account, query: str) -> None:
    assert_error(client.get(f"/v1/images?{query}", headers=user.auth), 422)


@pytest.mark.parametrize(
    "query", ["visibility=x", "visibility=", "visibility=%00", "visibility=%ff"]
)
def test_bad_visibility_is_422(client: httpx.Client, user: Account, query: str) -> None:
    r = client.post(f"/v1/upload?{query}", content=images.jpeg(32, 32), headers=user.auth)
    assert_error(r, 422)


# --- Range ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_image(target: Target, user: Account) -> dict[str, Any]:
    with target.client() as c:
        r = c.post("/v1/upload", content=images.jpeg(300, 200), headers=user.auth)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        body["auth"] = user.auth
        return body


def _image_routes(image: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"/images/{image['filename']}", {}),
        (f"/v1/user/{image['filename']}", image["auth"]),
    ]


@pytest.mark.parametrize("route", [0, 1], ids=["public", "owner"])
def test_unsatisfiable_range_is_416_in_the_error_shape(
    client: httpx.Client, target: Target, stored_image: dict[str, Any], route: int
) -> None:
    url, auth = _image_routes(stored_image)[route]
    size = stored_image["bytes"]
    past_the_end = (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=99999999999999999-")
    for value in (*past_the_end, "bytes=-0", f"bytes={size}-, {size + 5}-"):
        r = client.get(url, headers={**auth, "Range": value})
        assert_error(r, 416)
        if target.data_dir is not None:  # a gateway answers its own 416
            assert r.headers["Content-Range"] == f"bytes */{size}"


MALFORMED_RANGES = [
    "bytes=abc",
    "bytes=5-2",
    "items=0-1",
    "bytes=",
    "bytes=-",
    "bytes=--1",
    "bytes=1-a",
    "=0-1",
    "bytes",
    "bytes=0-0," * 200,
    "bytes=" + "9" * 5000 + "-",
    "bytes=0-1, 5-3",
]


@pytest.mark.parametrize("route", [0, 1], ids=["public", "owner"])
def test_malformed_range_never_breaks_the_answer(
    client: httpx.Client, target: Target, stored_image: dict[str, Any], route: int
) -> None:
    """imagegate ignores a malformed Range (the whole image, as RFC 9110 allows); a gateway or
    object store may refuse one instead, in the error shape."""
    url, auth = _image_routes(stored_image)[route]
    full = client.get(url, headers=auth).content
    for value in MALFORMED_RANGES:
        r = client.get(url, headers={**auth, "Range": value})
        if target.data_dir is not None:
            assert r.status_code == 200, (value, r.status_code, r.text[:200])
        if r.status_code == 200:
            assert r.content == full, value
        elif r.status_code != 206:
            assert_error(r)


def test_odd_but_valid_ranges_are_served(
    client: httpx.Client, target: Target, stored_image: dict[str, Any]
) -> None:
    if target.data_dir is None:
        pytest.skip("a gateway parses Range itself (NGINX refuses some valid forms with 416)")
    url, size = f"/images/{stored_image['filename']}", stored_image["bytes"]
    full = client.get(url).content
    for value, part in (
        ("bytes=0-1,", full[:2]),  # empty list elements are allowed
        ("bytes=-99999999999999999999999", full),  # a suffix longer than the image
        (f"bytes=5-{size * 10}", full[5:]),  # a last position past the end
        ("BYTES = 0-1", full[:2]),  # the unit is case-insensitive
    ):
        r = client.get(url, headers={"Range": value})
        assert r.status_code == 206, (value, r.status_code, r.text[:200])
        assert r.content == part, value


# --- multipart bodies ---------------------------------------------------------------


def _part(name: bytes, data: bytes, boundary: bytes = b"xyz") -> bytes:
    return (
        (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n')
        + data
        + b"\r\n"
    )


def _multipart_cases() -> dict[str, tuple[str, bytes]]:
    jpeg = images.jpeg(32, 32)
    mp = "multipart/form-data; boundary=xyz"
    return {
        "no boundary": ("multipart/form-data", _part(b"file", jpeg) + b"--xyz--\r\n"),
        "empty boundary": ("multipart/form-data; boundary=", b"--\r\n"),
        "boundary over 70 characters": (
            "multipart/form-data; boundary=" + "b" * 200,
            _part(b"file", jpeg, b"b" * 200) + b"--" + b"b" * 200 + b"--\r\n",
        ),
        "unterminated quoted boundary": ('multipart/form-data; boundary="xyz', b"--xyz--\r\n"),
        "garbage": (mp, b"garbage" * 100),
        "no file field": (mp, _part(b"other", b"hello") + b"--xyz--\r\n"),
        "no closing boundary": (mp, _part(b"file", jpeg)),
        "cut inside the part headers": (mp, b"--xyz\r\nContent-Disposition: form-da"),
        "header without a colon": (mp, b"--xyz\r\nContent-Disposition form-data\r\n\r\nx\r\n"),
        "huge part header": (
            mp,
            b'--xyz\r\nContent-Disposition: form-data; name="file"; x="'
            + b"a" * 100_000
            + b'"\r\n\r\nx\r\n--xyz--\r\n',
        ),
        "many parts": (mp, _part(b"a", b"x") * 100 + b"--xyz--\r\n"),
        "two file fields": (mp, _part(b"file", jpeg) * 2 + b"--xyz--\r\n"),
        "empty file field": (mp, _part(b"file", b"") + b"--xyz--\r\n"),
        "file field not an image": (mp, _part(b"file", b"hello") + b"--xyz--\r\n"),
        "only the closing boundary": (mp, b"--xyz--\r\n"),
        "empty body": (mp, b""),
    }


@pytest.mark.parametrize("case", sorted(_multipart_cases()))
def test_malformed_multipart_is_4xx(client: httpx.Client, user: Account, case: str) -> None:
    content_type, body = _multipart_cases()[case]
    r = client.post("/v1/upload", content=body, headers={**user.auth, "Content-Type": content_type})
    assert_error(r)


def test_well_formed_multipart_with_extras_is_stored(client: httpx.Client, user: Account) -> None:
    """The control: other fields and an epilogue around the file are fine."""
    body = _part(b"note", b"hi") + _part(b"file", images.jpeg(32, 32))
    body += b"--xyz--\r\nepilogue"
    r = client.post(
        "/v1/upload",
        content=body,
        headers={**user.auth, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 201, r.text


# --- names, methods and headers ------------------------------------------------------


def _refused_name(target: Target) -> tuple[int, ...]:
    """imagegate answers 404 for any name that is not ``<uuid4>.<ext>``; NGINX in front refuses
    some such paths itself (an encoded NUL, a path above the root) as malformed: 400."""
    return (404,) if target.data_dir is not None else (400, 404)


@pytest.mark.parametrize(
    "path",
    [
        "/images/%ff",
        "/images/%00.jpg",
        "/images/%ED%A0%80.jpg",
        "/images/" + "a" * 3000,
        "/images/..%2f..%2fetc%2fpasswd",
        "/v1/user/%ff",
        "/v1/user/%00",
        "/v1/user/" + "a" * 3000,
    ],
)
def test_odd_image_names_are_404(
    client: httpx.Client, target: Target, user: Account, path: str
) -> None:
    assert_error(client.get(path, headers=user.auth), *_refused_name(target))


def test_odd_names_on_delete_are_404(client: httpx.Client, target: Target, user: Account) -> None:
    for name in ("%ff.jpg", "%00", "a" * 3000, "%ED%A0%80.png"):
        r = client.delete(f"/v1/images/{name}", headers=user.auth)
        assert_error(r, *_refused_name(target))


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xe9\xe9", b"Bearer a.b.c", b"Bearer " + b"a" * 8000, b"Bearer", b"Basic eA==", b""],
)
def test_odd_authorization_is_401(client: httpx.Client, authorization: bytes) -> None:
    headers = {b"Authorization": authorization} if authorization else {}
    for method, path in (("GET", "/v1/user"), ("GET", "/v1/images"), ("POST", "/v1/upload")):
        assert_error(client.request(method, path, headers=headers, content=b"x"), 401)


def test_odd_conditional_headers(client: httpx.Client, stored_image: dict[str, Any]) -> None:
    url = f"/images/{stored_image['filename']}"
    for value in (b"\xff", b"W/", b"," * 1000, b'"' * 100):
        r = client.get(url, headers={b"If-None-Match": value})
        assert r.status_code in (200, 304), (value, r.status_code)


def test_wrong_methods_are_405(client: httpx.Client, user: Account) -> None:
    for method, path in (("PUT", "/v1/upload"), ("PATCH", "/v1/images"), ("PUT", "/v1/token")):
        r = client.request(method, path, headers=user.auth, content=b"{}")
        assert_error(r, 405)
