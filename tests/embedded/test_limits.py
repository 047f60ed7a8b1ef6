"""Limits an operator configures: codec capacity (503), per-image timeout, upload cap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Account, register_and_login
from tests.embedded.test_recovery import assert_consistent
from tests.support import images
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("tight") / "data",
        env={
            "IMAGEGATE_CODEC_WORKERS": "1",
            "IMAGEGATE_CODEC_QUEUE": "0",
            "IMAGEGATE_CODEC_TIMEOUT_SECONDS": "1.5",
            "IMAGEGATE_UPLOAD_MAX_BYTES": "3000000",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture
def user(tight: ServerProcess) -> Account:
    with httpx.Client(base_url=tight.base_url) as c:
        return register_and_login(c)


def test_busy_codec_answers_503_and_a_slow_image_times_out(
    tight: ServerProcess, user: Account
) -> None:
    slow = images.encode(images.photo(4000, 2500), "PNG")  # ~2.4 s of work: over the 1.5 s budget
    assert len(slow) < 3_000_000
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=tight.base_url, timeout=60) as c:
        pending = pool.submit(c.post, "/v1/upload", content=slow, headers=user.auth)
        time.sleep(0.8)  # the one worker is busy; the queue holds nothing
        busy = c.post("/v1/upload", content=images.jpeg(64, 64), headers=user.auth)
        assert busy.status_code == 503
        assert int(busy.headers["Retry-After"]) > 0
        assert "capacity" in busy.json()["error"]
        timed_out = pending.result()
        assert timed_out.status_code == 422, timed_out.text
        assert "longer than" in timed_out.json()["error"]
        # The overrunning worker was replaced: the next upload goes through.
        ok = c.post("/v1/upload", content=images.jpeg(64, 64), headers=user.auth)
        assert ok.status_code == 201
    assert assert_consistent(tight.data_dir) == 1


def test_configured_upload_cap(tight: ServerProcess, user: Account) -> None:
    with httpx.Client(base_url=tight.base_url, timeout=60) as c:
        r = c.post("/v1/upload", content=b"\xff\xd8\xff" + b"\0" * 3_000_000, headers=user.auth)
    assert r.status_code == 413
    assert "3000000" in r.json()["error"]


def test_data_dir_and_key_are_private(tight: ServerProcess) -> None:
    key = Path(tight.data_dir) / "jwt-signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert Path(tight.data_dir).stat().st_mode & 0o777 == 0o700
