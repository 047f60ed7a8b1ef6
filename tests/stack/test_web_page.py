"""The web page in a real browser through the gateway over HTTPS: the same journey as in
embedded mode (tests/browser), with the files NGINX serves from `imagegate web export`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.browser.test_web_page import journey
from tests.contract.test_visibility import GATEWAY_CACHE_SECONDS
from tests.stack.conftest import Stack
from tests.support.browser import Visit, browser, playwright, visit

__all__ = ["browser", "playwright", "visit"]  # the fixtures this module uses


def test_the_journey_through_the_gateway(
    stack: Stack, visit: Callable[..., Visit], tmp_path: Path
) -> None:
    v = visit(stack.https, ignore_https_errors=True)  # the stack's self-signed certificate
    journey(
        v,
        tmp_path,
        public_url_gone_within=GATEWAY_CACHE_SECONDS + 3,
        verify=stack.ssl_context(),
        curl_options=["--cacert", stack.urls["ca_bundle"]],
    )


def test_the_gateway_serves_the_page_and_its_assets_as_embedded_mode_does(stack: Stack) -> None:
    with httpx.Client(base_url=stack.https, verify=stack.ssl_context()) as c:
        page = c.get("/", headers={"Accept-Encoding": "gzip"})
        assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
        assert page.headers["content-encoding"] == "gzip"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        again = c.get("/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
        assets = [p.split('"')[0] for p in page.text.split('"/assets/')[1:]]
        assert assets
        for path in assets:
            asset = c.get(f"/assets/{path}")
            assert asset.status_code == 200, path
            assert "immutable" in asset.headers["cache-control"]
            assert asset.headers["x-content-type-options"] == "nosniff"
        missing = c.get("/assets/js/nope.0000000000.js")
        assert missing.status_code == 404 and missing.json()["error"]
