"""Limits an operator configures: upload places (503), the per-image budget, the upload cap.

Nothing here depends on how fast the machine is. Places are held on purpose by uploads whose
body is left unfinished (a raw socket that sent the headers and part of the body), and
progress is read from the admission gauges at /metrics, polled with deadlines.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Account, register_and_login
from tests.embedded.test_recovery import assert_consistent
from tests.support import images
from tests.support.rawhttp import close_now, metrics, read_response, start_upload, wait_for
from tests.support.server import ServerProcess

CAP = 3_000_000


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Places: 3 in all (1 worker + 2 waiting), 2 per account (1 processed + 1 waiting).
    server = ServerProcess(
        tmp_path_factory.mktemp("tight") / "data",
        env={
            "IMAGEGATE_CODEC_WORKERS": "1",
            "IMAGEGATE_CODEC_QUEUE": "2",
            "IMAGEGATE_CODEC_ACCOUNT_QUEUE": "1",
            "IMAGEGATE_UPLOAD_MAX_BYTES": str(CAP),
        },
    ).start()
    yield server
    server.stop()


def _account(server: ServerProcess) -> Account:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        return register_and_login(c)


def _admitted(server: ServerProcess) -> float:
    return metrics(server.base_url)["imagegate_uploads_admitted"]


def _hold_place(server: ServerProcess, account: Account, body: bytes) -> socket.socket:
    """An upload that holds a place until its socket is used again: half the body sent."""
    before = _admitted(server)
    sock = start_upload(server.base_url, account.token, body[: len(body) // 2], len(body))
    wait_for("the upload to be admitted", lambda: _admitted(server) == before + 1)
    return sock


def test_places_per_account_then_in_all(tight: ServerProcess) -> None:
    a, b, c = _account(tight), _account(tight), _account(tight)
    body = images.jpeg(200, 200)
    with httpx.Client(base_url=tight.base_url, timeout=60) as client:
        a1, a2 = _hold_place(tight, a, body), _hold_place(tight, a, body)
        over = client.post("/v1/upload", content=body, headers=a.auth)
        assert over.status_code == 503, over.text
        assert "this account" in over.json()["error"]
        assert int(over.headers["Retry-After"]) > 0

        b1 = _hold_place(tight, b, body)
        full = client.post("/v1/upload", content=body, headers=c.auth)
        assert full.status_code == 503, full.text
        assert "capacity" in full.json()["error"]
        # Refused from the headers alone: no body is sent, yet the answer comes.
        sock = start_upload(tight.base_url, c.token, b"", content_length=CAP)
        try:
            refused = read_response(sock, timeout=10)
        finally:
            close_now(sock)
        assert refused.status == 503 and "capacity" in refused.json()["error"]

        a1.sendall(body[len(body) // 2 :])  # one upload completes: its place is given back
        done = read_response(a1, timeout=60)
        assert done.status == 201, done.body
        a1.close()
        wait_for("the place to be given back", lambda: _admitted(tight) == 2)
        assert client.post("/v1/upload", content=body, headers=c.auth).status_code == 201

        for sock in (a2, b1):  # clients that leave mid-body give their places back too
            close_now(sock)
        wait_for("every place to be given back", lambda: _admitted(tight) == 0)
    assert_consistent(tight.data_dir)


def _chunks(data: bytes) -> Iterator[bytes]:
    """A body without Content-Length (chunked): the cap is found while streaming."""
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]


def test_places_are_given_back_on_every_path(tight: ServerProcess) -> None:
    """Each failure, more times than the account has places: none is ever answered 503."""
    user = _account(tight)
    jpeg = images.jpeg(64, 64)
    again = jpeg + b"again"

    def leave_mid_body() -> int:
        sock = start_upload(tight.base_url, user.token, jpeg[:100], len(jpeg))
        wait_for("the upload to be admitted", lambda: _admitted(tight) == 1)
        close_now(sock)
        wait_for("the place to be given back", lambda: _admitted(tight) == 0)
        return 499

    with httpx.Client(base_url=tight.base_url, timeout=60) as client:

        def post(content: bytes | Callable[[], Iterator[bytes]], **kw: str) -> Callable[[], int]:
            def send() -> int:
                body = content if isinstance(content, bytes) else content()
                headers = {**user.auth, **kw}
                return client.post("/v1/upload", content=body, headers=headers).status_code

            return send

        cases: dict[str, tuple[Callable[[], int], int]] = {
            "empty": (post(b""), 400),
            "not an image": (post(b"hello, world"), 415),
            "corrupt": (post(jpeg[:20] + bytes(2000)), 422),
            "over the cap, declared": (post(bytes(CAP + 1)), 413),
            "over the cap, streamed": (post(lambda: _chunks(bytes(CAP + 1))), 413),
            "malformed multipart": (
                post(b"--x\r\nno headers", **{"Content-Type": "multipart/form-data; boundary=x"}),
                400,
            ),
            "client leaves mid-body": (leave_mid_body, 499),
            # Each its own bytes (a tail after the JPEG's end): the same bytes again are
            # answered with the first image (200), a path of its own below.
            "stored": (lambda: post(jpeg + os.urandom(8))(), 201),
            "the same upload again": (post(again), 200),
        }
        assert post(again)() == 201
        for name, (send, expected) in cases.items():
            for _ in range(3):
                assert send() == expected, name
    wait_for("every place to be given back", lambda: _admitted(tight) == 0)
    # The counts are exact: the account holds its two places again, and no more.
    held = [_hold_place(tight, user, jpeg), _hold_place(tight, user, jpeg)]
    with httpx.Client(base_url=tight.base_url, timeout=60) as client:
        assert client.post("/v1/upload", content=jpeg, headers=user.auth).status_code == 503
    for sock in held:
        close_now(sock)
    wait_for("every place to be given back", lambda: _admitted(tight) == 0)
    assert assert_consistent(tight.data_dir) >= 3


def test_configured_upload_cap(tight: ServerProcess) -> None:
    user = _account(tight)
    with httpx.Client(base_url=tight.base_url, timeout=60) as c:
        r = c.post("/v1/upload", content=b"\xff\xd8\xff" + b"\0" * CAP, headers=user.auth)
    assert r.status_code == 413
    assert str(CAP) in r.json()["error"]


def test_data_dir_and_key_are_private(tight: ServerProcess) -> None:
    key = Path(tight.data_dir) / "jwt-signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert Path(tight.data_dir).stat().st_mode & 0o777 == 0o700


def test_an_image_over_its_budget_is_refused_and_its_worker_replaced(tmp_path: Path) -> None:
    """The budget's ceiling is 0.5 s; the image is a 12-megapixel photo-like PNG whose PNG
    optimization costs seconds of CPU (the test encodes it at compression level 1, a tenth of
    that): many times over, on any machine that runs this suite."""
    server = ServerProcess(
        tmp_path / "data",
        env={"IMAGEGATE_CODEC_WORKERS": "1", "IMAGEGATE_CODEC_TIMEOUT_SECONDS": "0.5"},
    ).start()
    try:
        user = _account(server)
        slow = images.encode(images.photo(4000, 3000), "PNG", compress_level=1)
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            over = c.post("/v1/upload", content=slow, headers=user.auth)
            assert over.status_code == 422, over.text
            assert "longer than" in over.json()["error"]
            ok = c.post("/v1/upload", content=images.jpeg(64, 64), headers=user.auth)
            assert ok.status_code == 201, ok.text
        assert assert_consistent(server.data_dir) == 1
    finally:
        server.stop()
