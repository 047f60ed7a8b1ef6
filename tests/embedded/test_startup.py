"""What ``imagegate serve`` starts (issue 13, part 2 item 5): the codec workers are forked from a
forkserver that holds only the image code — never the server (FastAPI, SQLAlchemy, pydantic),
which every worker used to import again from the ``imagegate`` script — and the server process
itself never loads the image libraries. Readiness (/healthz) includes the workers.

Run as people run it: the installed console script, not ``python -m imagegate`` (with ``-m``
multiprocessing already skipped the main module; the script is what made every worker import
the whole server). Which libraries a process holds is read from /proc/PID/maps: their C
extensions are mapped there once imported. No timing is asserted (bench/startup.py times it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import register_and_login
from tests.support import images
from tests.support.server import free_port

SCRIPT = Path(sys.executable).with_name("imagegate")
# C extensions that show which libraries a process has imported.
SERVER_ONLY = ("_pydantic_core", "sqlalchemy/util/_collections_cy", "greenlet/_greenlet")
IMAGE_CODE = ("PIL/_imaging.", "numpy/_core/_multiarray_umath")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, psutil.Process]]:
    data = tmp_path_factory.mktemp("startup") / "data"
    port = free_port()
    log = data.parent / "server.log"
    env = {**os.environ, "IMAGEGATE_LOG_LEVEL": "info", "IMAGEGATE_CODEC_WORKERS": "2"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", str(port), "--data-dir", str(data), "--demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                health = httpx.get(url + "/healthz", timeout=2)
                if health.status_code == 200:
                    break
                # Not ready: the workers are still starting (the server answers meanwhile).
                assert health.status_code == 503, health.text
                assert health.json()["checks"]["codec"] == "starting", health.text
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _workers(server: psutil.Process) -> list[psutil.Process]:
    """The codec workers: the forkserver's children (the forkserver is the server's child)."""
    return [p for child in server.children() for p in child.children() if p.is_running()]


def test_ready_means_the_codec_workers_run(server: tuple[str, psutil.Process]) -> None:
    url, _ = server
    health = httpx.get(url + "/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["checks"]["codec"] == "ok"
    assert httpx.get(url + "/status", timeout=10).json() == {"status": "OK"}


def test_workers_hold_the_image_code_and_nothing_of_the_server(
    server: tuple[str, psutil.Process],
) -> None:
    url, process = server
    with httpx.Client(base_url=url, timeout=60) as c:
        account = register_and_login(c)
        r = c.post("/v1/upload", content=images.jpeg(320, 240), headers=account.auth)
        assert r.status_code == 201, r.text  # the workers work
    workers = _workers(process)
    assert len(workers) >= 2, [p.cmdline() for p in process.children(recursive=True)]
    # The forkserver loaded the image code once, for every worker it forks (a new worker, or
    # one replacing another, then starts in a fork's time).
    (forkserver,) = (p for p in process.children() if "forkserver" in " ".join(p.cmdline()))
    maps = _mapped(forkserver.pid)
    assert all(lib in maps for lib in IMAGE_CODE), "the forkserver did not preload the image code"
    assert not any(lib in maps for lib in SERVER_ONLY), "the forkserver imported the server"
    for worker in workers:
        maps = _mapped(worker.pid)
        for lib in IMAGE_CODE:
            assert lib in maps, f"worker {worker.pid} lacks {lib}"
        for lib in SERVER_ONLY:
            assert lib not in maps, f"worker {worker.pid} imported the server ({lib})"


def test_the_server_process_never_loads_the_image_code(
    server: tuple[str, psutil.Process],
) -> None:
    _, process = server
    maps = _mapped(process.pid)
    assert "_pydantic_core" in maps  # (the check sees C extensions)
    for lib in IMAGE_CODE:
        assert lib not in maps, f"the server loaded {lib}"
