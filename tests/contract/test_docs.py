"""/docs: Swagger UI from this origin only, under a Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import httpx
import pytest

from tests.conftest import Target

EXPECTED_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _Page(HTMLParser):
    """Collects the URLs a page loads and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for attr in ("src", "href"):
            if values.get(attr):
                self.urls.append(str(values[attr]))
        self._in_inline_script = tag == "script" and "src" not in values

    def handle_endtag(self, tag: str) -> None:
        self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts.append(data)


def _directives(policy: str) -> dict[str, list[str]]:
    parts = (d.split() for d in policy.split(";") if d.strip())
    return {p[0]: p[1:] for p in parts}


@pytest.fixture(scope="module")
def page(target: Target) -> tuple[httpx.Response, _Page]:
    with target.client() as c:
        r = c.get("/docs")
    parsed = _Page()
    parsed.feed(r.text)
    return r, parsed


def test_docs_page_loads_only_same_origin_assets(page: tuple[httpx.Response, _Page]) -> None:
    r, parsed = page
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    # No absolute URL at all: not a CDN, not a validator badge, not a font service.
    assert "http://" not in r.text and "https://" not in r.text
    assert "//" not in "".join(u[:2] for u in parsed.urls)  # no scheme-relative URLs either
    assert len(parsed.urls) >= 2
    assert all(u.startswith("/") for u in parsed.urls), parsed.urls
    # Swagger UI's init script fetches the API description from this origin.
    assert "url: '/openapi.json'" in r.text


def test_docs_page_has_security_headers(page: tuple[httpx.Response, _Page]) -> None:
    r, parsed = page
    assert r.headers["x-content-type-options"] == "nosniff"
    policy = _directives(r.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    for sources in policy.values():
        assert not any(re.match(r"https?:|\*", s) for s in sources), sources
    scripts = policy["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    # The page's inline init script is allowed by its hash, and only it.
    assert parsed.inline_scripts
    for script in parsed.inline_scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in scripts
    assert policy["connect-src"] == ["'self'"]


def test_docs_assets_are_served_with_their_types(
    client: httpx.Client, page: tuple[httpx.Response, _Page]
) -> None:
    _, parsed = page
    for url in parsed.urls:
        r = client.get(url)
        assert r.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert EXPECTED_TYPES[suffix] in r.headers["content-type"], (url, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert len(r.content) > 100
        etag = r.headers.get("etag")
        if etag:  # a browser revalidates the megabyte of JavaScript instead of fetching it
            assert client.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_docs_assets_are_only_the_pages_own(client: httpx.Client) -> None:
    # The package also holds a demo index.html (pointing at a public demo API) and source
    # maps; only the files the page loads are served.
    for name in ("index.html", "swagger-initializer.js", "swagger-ui-bundle.js.map", "..%2Fx"):
        r = client.get(f"/docs/assets/{name}")
        assert r.status_code == 404, name
        assert "error" in r.json()


def test_the_api_description_is_served(client: httpx.Client) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json()["openapi"].startswith("3.")
    assert client.get("/redoc").status_code == 404


def test_the_served_swagger_ui_renders_this_openapi_version(client: httpx.Client) -> None:
    # Swagger UI 4 answers an OpenAPI 3.1 description (FastAPI's) with "Unable to render this
    # definition"; 3.1 support came with Swagger UI 5.
    version = client.get("/openapi.json").json()["openapi"]
    bundle = client.get("/docs/assets/swagger-ui-bundle.js").text
    found = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', bundle)
    assert found, "no version in the Swagger UI bundle"
    if version.startswith("3.1"):
        assert int(found.group(1)) >= 5, found.group(0)
