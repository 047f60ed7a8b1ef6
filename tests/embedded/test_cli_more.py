"""The rest of the imagegate command: `keys public`, `openapi`, `tls self-signed`, and
`serve --cert/--key`. (`storage init` needs an S3 service: tests/stack/test_storage.py.)"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.server import ServerProcess


def imagegate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagegate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _b64url_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def test_keys_public_prints_the_key_that_verifies_the_servers_tokens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        jwks = httpx.get(server.base_url + "/.well-known/jwks.json", timeout=30).json()
    finally:
        server.stop()
    printed = imagegate("keys", "public", "--data-dir", str(data))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in printed.stdout
    key = serialization.load_pem_public_key(printed.stdout.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    numbers = key.public_numbers()
    served = [(_b64url_int(k["x"]), _b64url_int(k["y"])) for k in jwks["keys"]]
    assert (numbers.x, numbers.y) in served
    # Twice the same answer: the command reads the key, it does not make a new one.
    assert imagegate("keys", "public", "--data-dir", str(data)).stdout == printed.stdout


def test_openapi_prints_every_route(tmp_path: Path) -> None:
    printed = imagegate("openapi", "--data-dir", str(tmp_path / "data"))
    assert printed.returncode == 0, printed.stderr
    doc = json.loads(printed.stdout)
    assert doc["openapi"].startswith("3.")
    for path, method in [
        ("/v1/register", "post"),
        ("/v1/user", "post"),
        ("/v1/user", "get"),
        ("/v1/user", "delete"),
        ("/v1/token", "post"),
        ("/v1/token/validation", "get"),
        ("/v1/upload", "post"),
        ("/images/{filename}", "get"),
        ("/v1/user/{filename}", "get"),
        ("/v1/images", "get"),
        ("/v1/images/{filename}", "delete"),
        ("/.well-known/jwks.json", "get"),
        ("/status", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in doc["paths"].get(path, {}), (method, path)
    # The same description the running server gives.
    server = ServerProcess(tmp_path / "served").start()
    try:
        served = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
    finally:
        server.stop()
    assert set(served["paths"]) == set(doc["paths"])


def test_tls_self_signed_writes_a_usable_p256_pair(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    made = imagegate("tls", "self-signed", str(folder), "--host", "images.test")
    assert made.returncode == 0, made.stderr
    cert = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
    assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.issuer == cert.subject  # self-signed
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "images.test" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(a) for a in names.get_values_for_type(x509.IPAddress)}


def test_serve_with_cert_and_key_files(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    assert imagegate("tls", "self-signed", str(folder)).returncode == 0
    cert, key = folder / "cert.pem", folder / "key.pem"
    server = ServerProcess(
        tmp_path / "data", args=("--cert", str(cert), "--key", str(key)), scheme="https"
    ).start()
    try:
        trust = ssl.create_default_context(cafile=cert)
        r = httpx.get(server.base_url + "/status", verify=trust, timeout=30)
        assert r.json() == {"status": "OK"}
        # The certificate on the wire is the file's, not one generated into the data dir.
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            trust.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        on_wire = x509.load_der_x509_certificate(der)
        assert on_wire == x509.load_pem_x509_certificate(cert.read_bytes())
        assert not (tmp_path / "data" / "tls").exists()
        # Plain HTTP on the HTTPS port is not served.
        try:
            plain = httpx.get(f"http://127.0.0.1:{server.port}/status", timeout=10)
            assert plain.status_code >= 400
        except httpx.HTTPError:
            pass
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [(("--cert", "{cert}"), "key"), (("--port", "99999"), "port")],
    ids=["cert-without-key", "port-out-of-range"],
)
def test_bad_serve_settings_are_a_clear_error_not_a_traceback(
    tmp_path: Path, flags: tuple[str, ...], needle: str
) -> None:
    folder = tmp_path / "tls"
    assert imagegate("tls", "self-signed", str(folder)).returncode == 0
    args = [f.format(cert=folder / "cert.pem") for f in flags]
    refused = imagegate("serve", "--data-dir", str(tmp_path / "data"), *args)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr, refused.stderr[-600:]
    assert needle in refused.stderr
