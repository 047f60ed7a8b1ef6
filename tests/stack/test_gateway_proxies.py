"""The gateway behind a load balancer or an Ingress, and in front of an S3 over https.

The stack trusts 127.0.0.2 as the proxy in front of it (deploy/local/stack.py
TRUSTED_PROXIES): a client connecting from there is "the Ingress", whose X-Forwarded-For and
X-Forwarded-Proto are believed; anyone else's are ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from PIL import Image

from tests.conftest import new_login, new_password
from tests.stack.conftest import Stack, stack_module
from tests.support import images
from tests.support.server import free_port

PROXY = "127.0.0.2"  # trusted by the stack's gateway
STRANGER = "127.0.0.3"  # a loopback client like any other: its forwarded headers are ignored


def client_from(stack: Stack, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=stack.http, transport=transport, timeout=30)


def test_metrics_allow_list_sees_the_client_behind_the_proxy(stack: Stack) -> None:
    """Through the proxy, an outside client is refused /metrics and an inside one is not;
    a direct client cannot talk its way in or out with the header."""
    outside = {"X-Forwarded-For": "203.0.113.7"}
    inside = {"X-Forwarded-For": "10.1.2.3"}
    with client_from(stack, PROXY) as proxy:
        refused = proxy.get("/metrics", headers=outside)
        assert refused.status_code == 403
        assert refused.json()["error"]
        assert proxy.get("/metrics", headers=inside).status_code == 200
        # The proxy appends the address it saw: the last untrusted one is the client.
        spoofed = {"X-Forwarded-For": "10.1.2.3, 203.0.113.7"}
        assert proxy.get("/metrics", headers=spoofed).status_code == 403
    for source in ("127.0.0.1", STRANGER):
        with client_from(stack, source) as direct:
            # A loopback client is inside; its X-Forwarded-For is not believed either way.
            assert direct.get("/metrics", headers=outside).status_code == 200


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def _login_burst(stack: Stack, source: str, client_address: str, count: int) -> list[int]:
    """``count`` logins sent at once from ``source`` on behalf of ``client_address``."""
    host, port = stack.http.removeprefix("http://").split(":")
    request = (
        f"POST /v1/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Forwarded-For: {client_address}\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode()
    sockets = [
        socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
        for _ in range(count)
    ]
    try:
        for s in sockets:
            s.sendall(request)
        return [_read_status(s) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_the_login_rate_limit_counts_each_client_behind_the_proxy(stack: Stack) -> None:
    """Behind an Ingress every request arrives from the Ingress's address; without the real
    client's address one busy client would have the whole world refused."""
    burst = int(os.environ.get("IMAGEGATE_STACK_LOGIN_BURST", "40"))
    noisy = _login_burst(stack, PROXY, "198.51.100.10", 3 * burst)
    assert noisy.count(429) >= burst, noisy  # the noisy client is limited...
    quiet = _login_burst(stack, PROXY, "198.51.100.11", burst // 2)
    assert set(quiet) == {400}, quiet  # ...and another one behind the same proxy is not


def _login_cookie(stack: Stack, source: str, proto: str) -> str:
    creds = {"login": new_login(), "password": new_password()}
    with client_from(stack, source) as c:
        assert c.post("/v1/register", json=creds).status_code == 201
        r = c.post("/v1/token", json=creds, headers={"X-Forwarded-Proto": proto})
        assert r.status_code == 200, r.text
        return r.headers["set-cookie"]


def test_cookies_keep_secure_when_tls_ends_at_the_proxy(stack: Stack) -> None:
    assert "secure" in _login_cookie(stack, PROXY, "https").lower()
    # A direct plain-HTTP client cannot claim https (nor a proxy claim anything else).
    assert "secure" not in _login_cookie(stack, STRANGER, "https").lower()
    assert "secure" not in _login_cookie(stack, PROXY, "http").lower()


# --- S3 over https --------------------------------------------------------------------------


def _wait_for(url: str, ca_file: str, deadline: float) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    while True:
        try:
            if httpx.get(url, verify=context, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tls_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second MinIO serving https only, with a certificate for "localhost"."""
    from imagegate.storage.s3 import public_read_policy
    from imagegate.tls import ensure_self_signed

    base = tmp_path_factory.mktemp("tls-minio")
    cert, key = ensure_self_signed(base / "tls")
    certs = base / "certs"
    certs.mkdir()
    shutil.copy(cert, certs / "public.crt")
    shutil.copy(key, certs / "private.key")
    port = free_port()
    user, password = "tlsadmin", uuid.uuid4().hex
    env = {**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password}
    env["MINIO_BROWSER"] = "off"
    binary = stack_module().ensure_minio()
    cmd = [str(binary), "server", str(base / "data"), "--address", f"127.0.0.1:{port}"]
    cmd += ["--certs-dir", str(certs), "--quiet"]
    with open(base / "minio.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = f"https://localhost:{port}"
        _wait_for(f"{endpoint}/minio/health/live", str(cert), time.monotonic() + 60)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=user,
            aws_secret_access_key=password,
            region_name="us-east-1",
            verify=str(cert),
            config=Config(s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="data")
        s3.put_bucket_policy(Bucket="data", Policy=json.dumps(public_read_policy("data")))
        name = f"{uuid.uuid4()}.png"
        body = images.encode(Image.new("RGB", (40, 30), (200, 10, 10)), "PNG")
        s3.put_object(Bucket="data", Key=f"public/{name}", Body=body, ContentType="image/png")
        yield {"port": str(port), "ca": str(cert), "name": name, "body": body.hex()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _gateway(
    stack: Stack, base: Path, minio_port: str, ca_file: str
) -> tuple[subprocess.Popen[bytes], int]:
    """The stack's gateway configuration with S3 over https, on ports of its own."""
    module = stack_module()
    conf_dir, run_dir, log_dir = base / "conf", base / "run", base / "logs"
    for d in (conf_dir, run_dir, log_dir):
        d.mkdir(parents=True)
    values = module.gateway_values(conf_dir, run_dir, log_dir)
    plain = free_port()
    values |= {
        "NGINX_USER_DIRECTIVE": "user root;" if os.geteuid() == 0 else "",
        "OWNER_CACHE_DIR": str(run_dir / "owner-cache"),  # never the stack gateway's own
        "MINIO_SERVERS": f"server 127.0.0.1:{minio_port};",
        "MINIO_HOST": f"localhost:{minio_port}",
        "S3_SCHEME": "https",
        "S3_TLS_NAME": "localhost",
        "S3_CA_FILE": ca_file,
        "PLAIN_HTTP_SERVER": (
            f"server {{ listen 127.0.0.1:{plain}; include {conf_dir}/imagegate-routes.conf; }}"
        ),
        "HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "HTTPS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    module.write_gateway_config(conf_dir, values)
    cmd = ["nginx", "-c", str(conf_dir / "nginx.conf"), "-p", str(base), "-g", "daemon off;"]
    with open(log_dir / "nginx.out", "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), plain


@pytest.mark.parametrize("trusted", [True, False])
def test_public_images_come_from_an_s3_over_https(
    stack: Stack, tls_minio: dict[str, str], tmp_path: Path, trusted: bool
) -> None:
    """With the S3's CA the image is served; with another CA the gateway refuses to talk to
    it (the certificate is checked, not just encrypted)."""
    from imagegate.tls import ensure_self_signed

    ca = tls_minio["ca"] if trusted else str(ensure_self_signed(tmp_path / "other")[0])
    proc, port = _gateway(stack, tmp_path / "gw", tls_minio["port"], ca)
    try:
        url = f"http://127.0.0.1:{port}/images/{tls_minio['name']}"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(url, timeout=10)
                break
            except httpx.ConnectError:
                assert proc.poll() is None, (tmp_path / "gw/logs/nginx.out").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        if trusted:
            assert r.status_code == 200, r.text
            assert r.content == bytes.fromhex(tls_minio["body"])
            assert r.headers["content-type"] == "image/png"
        else:
            assert r.status_code == 502, r.text
            assert r.json()["error"]
            log = (tmp_path / "gw" / "logs" / "error.log").read_text()
            assert "certificate verify failed" in log or "self-signed" in log, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
