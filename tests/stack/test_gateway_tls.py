"""The gateway's TLS promises: HTTP redirects to HTTPS, TLS 1.2 or newer only, HTTP/2."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import warnings

import httpx
import pytest

from tests.stack.conftest import Stack


def _handshake(
    stack: Stack, version: ssl.TLSVersion, alpn: list[str] | None = None
) -> ssl.SSLSocket:
    host, port = stack.https.removeprefix("https://").split(":")
    ctx = stack.ssl_context()
    with warnings.catch_warnings():  # naming the old versions is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        # Let this client offer anything, so that a refusal can only come from the server.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection((host, int(port)), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def test_http_redirects_to_https_keeping_the_path_and_method(stack: Stack) -> None:
    https_port = stack.https.rsplit(":", 1)[1]
    with httpx.Client(base_url=stack.urls["http_redirect"], timeout=30) as c:
        for method in ("GET", "POST"):
            r = c.request(method, "/v1/images?limit=2")
            # 308 (not 301/302): a client repeats a POST as a POST, with its body.
            assert r.status_code == 308, (method, r.status_code)
            assert r.headers["Location"] == f"https://127.0.0.1:{https_port}/v1/images?limit=2"
    # Following it lands on the HTTPS API.
    with httpx.Client(verify=stack.ssl_context(), follow_redirects=True, timeout=30) as c:
        r = c.get(stack.urls["http_redirect"] + "/status")
        assert r.status_code == 200
        assert r.json() == {"status": "OK"}
        assert str(r.url).startswith("https://")


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_older_than_1_2_is_refused(stack: Stack, version: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = getattr(ssl.TLSVersion, version)
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(stack, old).close()
    # The server's "protocol version" alert, not this client failing to offer the version.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value) or "UNSUPPORTED_PROTOCOL" in str(
        refused.value
    ), refused.value


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_tls_1_2_and_1_3_are_served_with_http2(
    stack: Stack, version: ssl.TLSVersion, name: str
) -> None:
    with _handshake(stack, version, alpn=["h2", "http/1.1"]) as tls:
        assert tls.version() == name
        assert tls.selected_alpn_protocol() == "h2"


def test_curl_speaks_http2_to_the_gateway(stack: Stack) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed (the seed's session uses it too)"
    done = subprocess.run(
        [
            curl,
            "-sS",
            "--http2",
            "--cacert",
            stack.urls["ca_bundle"],
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            stack.https + "/status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 200"
