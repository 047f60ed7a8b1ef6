"""Fixtures shared by every suite: a real server (or IMAGEGATE_BASE_URL) and accounts on it."""

from __future__ import annotations

import os
import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.server import ServerProcess


@dataclass
class Target:
    """What the contract suite talks to; ``data_dir`` is known only for a server we started."""

    base_url: str
    data_dir: Path | None
    verify: bool | ssl.SSLContext = True
    pid: int | None = None  # the server process, when we started it

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.verify, timeout=60, **kwargs)

    def stored_files(self) -> set[str] | None:
        """Names of stored originals and temp files, when the storage is a local folder.
        Variants (``<uuid>.<key>.<ext>``, made in the background after each upload) are left
        out: see ``variant_files``."""
        if self.data_dir is None:
            return None
        names = set()
        for sub in ("images", "tmp"):
            folder = self.data_dir / sub
            if folder.exists():
                names |= {f"{sub}/{p.name}" for p in folder.iterdir() if p.name.count(".") < 2}
        return names

    def variant_files(self, image_name: str) -> set[str] | None:
        """The stored variants of one image, when the storage is a local folder."""
        if self.data_dir is None:
            return None
        stem = image_name.partition(".")[0]
        return {p.name for p in (self.data_dir / "images").glob(f"{stem}.*.*")}


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = os.environ.get("IMAGEGATE_BASE_URL")
    if url:
        ca = os.environ.get("IMAGEGATE_CA_BUNDLE")
        verify = ssl.create_default_context(cafile=ca) if ca else True
        yield Target(url.rstrip("/"), None, verify)
        return
    server = ServerProcess(tmp_path_factory.mktemp("contract") / "data").start()
    assert server.process is not None
    yield Target(server.base_url, server.data_dir, pid=server.process.pid)
    server.stop()


@pytest.fixture
def client(target: Target) -> Iterator[httpx.Client]:
    with target.client() as c:
        yield c


@dataclass
class Account:
    id: str
    login: str
    password: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def new_login() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def new_password() -> str:
    return secrets.token_urlsafe(18)


def post_as_a_patient_client(
    client: httpx.Client, path: str, body: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST, waiting as told and trying again while the answer is 429: through the gateway, the
    suite registers and logs in faster than its per-address rate limit allows (by design)."""
    deadline = time.monotonic() + 120
    while True:
        r = client.post(path, json=body, headers=headers)
        if r.status_code != 429 or time.monotonic() > deadline:
            return r
        time.sleep(float(r.headers.get("retry-after", "1")))


def register_and_login(client: httpx.Client) -> Account:
    creds = {"login": new_login(), "password": new_password()}
    r = post_as_a_patient_client(client, "/v1/register", creds)
    assert r.status_code == 201, r.text
    t = post_as_a_patient_client(client, "/v1/token", creds)
    assert t.status_code == 200, t.text
    return Account(r.json()["id"], creds["login"], creds["password"], t.text)


@pytest.fixture
def make_account(client: httpx.Client) -> Callable[[], Account]:
    return lambda: register_and_login(client)


@pytest.fixture
def account(make_account: Callable[[], Account]) -> Account:
    return make_account()
