"""Fair shares of the codec workers, refusals before the body is read, and uploads cancelled
when their client leaves.

The work is controlled, not timed: a "slow" upload is a 3000x2000 photo-like PNG, which the
server re-encodes with PNG optimization (seconds of CPU; the test encodes it at compression
level 1, a tenth of that), and a "small" one is a 32x32 image (milliseconds). The server runs
two codec workers, so one account may hold one of them (``codec_account_workers`` defaults to
half): whatever the machine's speed, a small upload of another account never waits for a slow
one. Progress is read from the admission gauges at /metrics, polled with deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Account, register_and_login
from tests.embedded.test_recovery import assert_consistent
from tests.support import images
from tests.support.rawhttp import (
    close_now,
    metrics,
    read_response,
    start_upload,
    wait_for,
)
from tests.support.server import ServerProcess

ACCOUNT_QUEUE = 4  # the default: one upload processed and four waiting per account
SMALL_UPLOAD_BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("fair") / "data",
        env={"IMAGEGATE_CODEC_WORKERS": "2", "IMAGEGATE_CODEC_QUEUE": "16"},
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slow_images() -> list[bytes]:
    return [
        images.encode(images.photo(3000, 2000, seed=i), "PNG", compress_level=1)
        for i in range(ACCOUNT_QUEUE + 1)
    ]


def _account(server: ServerProcess) -> Account:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        return register_and_login(c)


def _gauges(server: ServerProcess) -> tuple[float, float, float]:
    m = metrics(server.base_url)
    return (
        m["imagegate_uploads_admitted"],
        m["imagegate_uploads_waiting"],
        m["imagegate_codec_workers_busy"],
    )


def _outcomes(server: ServerProcess, outcome: str) -> float:
    return metrics(server.base_url).get(f'imagegate_uploads_total{{outcome="{outcome}"}}', 0.0)


def _idle(server: ServerProcess) -> bool:
    return _gauges(server) == (0, 0, 0)


def _upload(server: ServerProcess, account: Account, data: bytes) -> tuple[int, float]:
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        r = c.post("/v1/upload", content=data, headers=account.auth)
    return r.status_code, time.monotonic()


def _image_count(server: ServerProcess, account: Account) -> int:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        r = c.get("/v1/user", headers=account.auth)
    assert r.status_code == 200, r.text
    return int(r.json()["images"])


def test_a_flooding_account_cannot_delay_another_accounts_upload(
    server: ServerProcess, slow_images: list[bytes]
) -> None:
    flooder, other = _account(server), _account(server)
    with ThreadPoolExecutor(len(slow_images)) as pool:
        floods: list[Future[tuple[int, float]]] = [
            pool.submit(_upload, server, flooder, data) for data in slow_images
        ]
        # All five received: one processing, four waiting; the second worker stays free.
        wait_for("the flood to be admitted", lambda: _gauges(server) == (5, 4, 1))

        # The flooder's sixth upload is refused from its headers alone: no body is ever sent,
        # so the answer cannot have waited for one.
        sock = start_upload(server.base_url, flooder.token, b"", content_length=30_000_000)
        try:
            refused = read_response(sock, timeout=10)
        finally:
            close_now(sock)
        assert refused.status == 503
        assert "this account" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) > 0
        # An ordinary client sending a large body whole still hears the 503.
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            big = c.post("/v1/upload", content=bytes(20_000_000), headers=flooder.auth)
        assert big.status_code == 503, big.text

        # Another account's small upload gets the free worker at once. Bound: it finishes
        # within SMALL_UPLOAD_BOUND_SECONDS and before the flooder's second upload does.
        # Neither is machine-speed luck: it never waits for a flooder's upload (the flooder
        # may hold one worker of two), and its own work is a 32x32 image's.
        start = time.monotonic()
        status, finished = _upload(server, other, images.encode(images.photo(32, 32), "PNG"))
        assert status == 201
        assert finished - start < SMALL_UPLOAD_BOUND_SECONDS
        done_before = sum(1 for f in floods if f.done() and f.result()[1] < finished)
        assert done_before <= 1, f"{done_before} flooder uploads finished first"

        assert [f.result()[0] for f in floods] == [201] * len(floods)
    wait_for("the server to be idle", lambda: _idle(server))
    assert _image_count(server, flooder) == len(slow_images)
    assert_consistent(server.data_dir)


def test_a_client_that_leaves_cancels_its_upload_queued_or_processing(
    server: ServerProcess, slow_images: list[bytes]
) -> None:
    wait_for("the server to be idle", lambda: _idle(server))
    first, second, leaver = _account(server), _account(server), _account(server)
    cancelled_before = _outcomes(server, "499")
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(_upload, server, a, slow_images[0]) for a in (first, second)]
        wait_for("both workers to be busy", lambda: _gauges(server) == (2, 0, 2))

        # Queued: a whole upload sent, then the client leaves before the answer.
        sock = start_upload(server.base_url, leaver.token, images.jpeg(64, 64))
        wait_for("the upload to wait for a worker", lambda: _gauges(server) == (3, 1, 2))
        close_now(sock)
        # It leaves the line and gives its place back while both workers are still busy
        # with seconds of work: it was never processed.
        wait_for("the place to be given back", lambda: _gauges(server)[:2] == (2, 0))
        assert not any(f.done() for f in busy)
        assert [f.result()[0] for f in busy] == [201, 201]
    wait_for("the server to be idle", lambda: _idle(server))
    assert _outcomes(server, "499") == cancelled_before + 1

    # Processing: the worker's job is stopped, nothing is stored, the place is given back.
    sock = start_upload(server.base_url, leaver.token, slow_images[1])
    wait_for("the upload to be processed", lambda: _gauges(server) == (1, 0, 1))
    close_now(sock)
    wait_for("the upload to be cancelled", lambda: _idle(server))
    assert _outcomes(server, "499") == cancelled_before + 2
    assert _image_count(server, leaver) == 0
    assert_consistent(server.data_dir)
    # The stopped worker was replaced: the next upload is processed.
    assert _upload(server, leaver, images.jpeg(64, 64))[0] == 201
