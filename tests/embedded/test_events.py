"""Events in embedded mode, against real servers: every change commits with its event (and
a failed one with none), every emitted event matches its published schema, deleting an
account answers once its records are gone and its files follow within seconds (HTTP and
CLI), and ``kill -9`` in the middle of a purge loses nothing."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from imagegate.events.envelope import ALL_TYPES, EventType
from tests.conftest import Account, new_login, new_password, register_and_login
from tests.contract.test_ops import metric, metric_samples
from tests.support import images
from tests.support.cli import imagegate
from tests.support.server import ServerProcess

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "events"
SECRET_WORDS = re.compile(r"pass|hash|token|secret|key|cookie", re.IGNORECASE)
# Field names those words match that hold no secret (read: a time).
NOT_SECRET = {"tokens_valid_after"}


@dataclass(frozen=True)
class Row:
    seq: int
    type: str
    owner_id: str
    subject: str
    payload: str
    published_at: str | None


def query(data_dir: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(data_dir / "imagegate.db")) as db:
        return db.execute(sql, args).fetchall()


def outbox(data_dir: Path, owner: str | None = None) -> list[Row]:
    sql = "SELECT seq, type, owner_id, subject, payload, published_at FROM outbox_events"
    if owner is None:
        return [Row(*r) for r in query(data_dir, sql + " ORDER BY seq")]
    return [Row(*r) for r in query(data_dir, sql + " WHERE owner_id = ? ORDER BY seq", owner)]


def purge_rows(data_dir: Path, owner: str) -> set[str]:
    return {
        r[0] for r in query(data_dir, "SELECT name FROM purge_objects WHERE owner_id = ?", owner)
    }


def wait_until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def upload(c: httpx.Client, account: Account, visibility: str = "public", seed: int = 0) -> str:
    r = c.post(
        f"/v1/upload?visibility={visibility}",
        content=images.jpeg(48, 32, seed=seed),
        headers=account.auth,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["filename"])


def delete_account(c: httpx.Client, account: Account, password: str) -> httpx.Response:
    return c.request("DELETE", "/v1/user", json={"password": password}, headers=account.auth)


def handled(c: httpx.Client, type: str, outcome: str) -> float:
    samples = metric_samples(c.get("/metrics").text)
    return metric(samples, "imagegate_events_handled_total", type=type, outcome=outcome)


def stored(data_dir: Path, name: str) -> bool:
    return (data_dir / "images" / name).exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    started = ServerProcess(tmp_path_factory.mktemp("events") / "data", args=()).start()
    yield started
    started.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def test_each_change_commits_with_its_event_and_each_event_matches_its_schema(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = server.data_dir
    creds = {"login": new_login(), "password": new_password()}
    before = len(outbox(data))
    # Refused changes write no event.
    assert client.post("/v1/register", json={**creds, "password": "short"}).status_code == 422
    assert len(outbox(data)) == before
    account = register_and_login(client)
    assert (
        client.post(
            "/v1/register", json={"login": account.login, "password": creds["password"]}
        ).status_code
        == 409
    )
    assert (
        client.post("/v1/upload", content=b"not an image", headers=account.auth).status_code == 415
    )
    assert client.post("/v1/upload", content=b"", headers=account.auth).status_code == 400
    public = upload(client, account, "public", seed=1)
    private = upload(client, account, "private", seed=2)
    assert client.delete(f"/v1/images/{public}", headers=account.auth).status_code == 204
    assert client.delete(f"/v1/images/{public}", headers=account.auth).status_code == 404
    change = f"/v1/images/{private}"
    assert client.patch(change, json={"visibility": "no"}, headers=account.auth).status_code == 422
    assert client.patch(change, json={"visibility": "public"}, headers=account.auth).is_success
    assert client.patch(change, json={"visibility": "public"}, headers=account.auth).is_success
    # A second session (a JSON login), logged out; the first one goes on.
    other = client.post(
        "/v1/token",
        json={"login": account.login, "password": account.password},
        headers={"Accept": "application/json"},
    ).json()["access_token"]
    assert client.post("/v1/logout", headers={"Authorization": f"Bearer {other}"}).is_success
    assert delete_account(client, account, "wrong " + account.password).status_code == 401
    assert delete_account(client, account, account.password).status_code == 204
    assert len(outbox(data)) == before + 7  # exactly the seven changes that committed

    rows = outbox(data, account.id)
    assert [(r.type, r.subject) for r in rows] == [
        (EventType.ACCOUNT_CREATED, f"users/{account.id}"),
        (EventType.IMAGE_STORED, f"images/{public}"),
        (EventType.IMAGE_STORED, f"images/{private}"),
        (EventType.IMAGE_DELETED, f"images/{public}"),
        (EventType.IMAGE_VISIBILITY_CHANGED, f"images/{private}"),
        (EventType.SESSIONS_REVOKED, f"users/{account.id}"),
        (EventType.ACCOUNT_DELETED, f"users/{account.id}"),
    ]
    assert {r.type for r in rows} == set(ALL_TYPES)  # every type the code emits is covered
    validators = {
        t: Draft202012Validator(
            json.loads((SCHEMAS / f"{t}.schema.json").read_text()),
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        for t in ALL_TYPES
    }
    for row in rows:
        event = json.loads(row.payload)
        errors = [e.message for e in validators[row.type].iter_errors(event)]
        assert errors == [], (row.type, errors)
        assert event["ownerid"] == account.id
        leaked = [k for k in event["data"] if SECRET_WORDS.search(k) and k not in NOT_SECRET]
        assert leaked == [], (row.type, leaked)
        assert account.password not in row.payload
        assert account.token not in row.payload
        assert "argon2" not in row.payload
    created = json.loads(rows[0].payload)["data"]
    assert created["login"] == account.login and created["id"] == account.id
    deleted = json.loads(rows[-1].payload)["data"]
    assert (deleted["images"], deleted["login"]) == (1, account.login)
    # The inline dispatcher handles and marks every one of them.
    wait_until(lambda: all(r.published_at for r in outbox(data, account.id)), "all published")


def test_deleting_the_account_answers_when_its_records_are_gone_and_its_files_follow(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = server.data_dir
    account = register_and_login(client)
    names = [upload(client, account, v, seed=i) for i, v in enumerate(["public", "private"] * 2)]
    assert all(stored(data, n) for n in names)
    # The password is checked as a login's is: a missing one is refused without a check.
    r = client.request("DELETE", "/v1/user", json={}, headers=account.auth)
    assert r.status_code == 401 and "password" in r.json()["error"]
    assert client.request("DELETE", "/v1/user", json={"password": "x"}).status_code == 401
    r = delete_account(client, account, account.password)
    assert r.status_code == 204, r.text
    # Answered: the records are gone, and the account's token with them.
    assert query(data, "SELECT count(*) FROM users WHERE id = ?", account.id) == [(0,)]
    assert query(data, "SELECT count(*) FROM images WHERE owner_id = ?", account.id) == [(0,)]
    assert client.get("/v1/user", headers=account.auth).status_code == 401
    assert client.get(f"/v1/user/{names[1]}", headers=account.auth).status_code == 401
    assert client.get(f"/images/{names[0]}").status_code == 404
    wait_until(lambda: not any(stored(data, n) for n in names), "the files removed")
    wait_until(lambda: outbox(data, account.id)[-1].published_at is not None, "the event published")
    assert purge_rows(data, account.id) == set()
    assert handled(client, EventType.ACCOUNT_DELETED, "ok") >= 1


def test_cli_user_delete_answers_when_records_are_gone_and_the_server_removes_the_files(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = server.data_dir
    account = register_and_login(client)
    names = [upload(client, account, seed=i) for i in range(2)]
    # Another process: the running server's dispatcher sees its event in the shared outbox.
    done = imagegate("user", "delete", account.login.upper(), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"deleted {account.login} and 2 images; the image files are removed in the background "
        "by the server (within seconds while it runs)\n"
    )
    assert query(data, "SELECT count(*) FROM images WHERE owner_id = ?", account.id) == [(0,)]
    assert client.get("/v1/user", headers=account.auth).status_code == 401
    wait_until(lambda: not any(stored(data, n) for n in names), "the files removed")
    [row] = [r for r in outbox(data, account.id) if r.type == EventType.ACCOUNT_DELETED]
    wait_until(lambda: outbox(data, account.id)[-1].published_at is not None, "the event published")
    assert row.subject == f"users/{account.id}"


def test_the_deletion_password_is_throttled_like_a_login(server: ServerProcess) -> None:
    """Wrong passwords count as failed logins of the account: after the budget the right one
    is refused too (429), and nothing is deleted. From its own loopback address, so the
    address's block does not touch the other tests."""
    transport = httpx.HTTPTransport(local_address="127.0.0.93")
    with httpx.Client(base_url=server.base_url, transport=transport, timeout=60) as c:
        account = register_and_login(c)
        name = upload(c, account)
        failed_before = metric(
            metric_samples(c.get("/metrics").text), "imagegate_logins_total", outcome="failed"
        )
        for i in range(5):
            r = delete_account(c, account, f"wrong {i}")
            assert (r.status_code, r.json()) == (401, {"error": "wrong password"})
        r = delete_account(c, account, account.password)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        samples = metric_samples(c.get("/metrics").text)
        assert metric(samples, "imagegate_logins_total", outcome="failed") - failed_before == 5
        assert c.get("/v1/user", headers=account.auth).status_code == 200
        assert stored(server.data_dir, name)
        types = [r.type for r in outbox(server.data_dir, account.id)]
        assert EventType.ACCOUNT_DELETED not in types


def test_kill_9_in_the_middle_of_a_purge_loses_nothing(tmp_path: Path) -> None:
    """Deterministic, without a test hook: a non-empty directory in place of one of the
    account's files makes removing it fail (even for root), so the purge does its first
    batch, fails in its second and is retried — the event is then in flight, half done, for
    as long as the obstacle stays. The server is killed with SIGKILL in that state; after the
    restart the event is offered again (and fails again on the obstacle); once the obstacle
    is gone the purge finishes and the event is marked published."""
    data = tmp_path / "data"
    env = {"IMAGEGATE_PURGE_BATCH_SIZE": "2"}
    server = ServerProcess(data, args=(), env=env).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            account = register_and_login(c)
            for i in range(6):
                upload(c, account, seed=i)

            def objects() -> list[str]:
                folder = data / "images"
                return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

            # Each image's 12 variants (4 presets x 3 formats) are made in the background and
            # purged with it: waited for, so that the batches are the same in every run.
            wait_until(lambda: len(objects()) == 6 * 13, "every image's variants")
            names = objects()
            obstacle = data / "images" / names[3]  # in the second batch (objects 2 and 3)
            obstacle.unlink()
            obstacle.mkdir()
            (obstacle / "keep").write_bytes(b"")
            assert delete_account(c, account, account.password).status_code == 204
            wait_until(
                lambda: handled(c, EventType.ACCOUNT_DELETED, "error") >= 1, "the purge failed"
            )
        # Half done: the first batch removed and forgotten, the second still queued.
        assert not any(stored(data, n) for n in names[:3])
        assert purge_rows(data, account.id) == set(names[2:])
        [row] = [r for r in outbox(data, account.id) if r.type == EventType.ACCOUNT_DELETED]
        assert row.published_at is None
        server.kill()  # SIGKILL: no shutdown of any kind
        # Make the stuck event look five minutes old, so /healthz shows what a long outage
        # would (instead of waiting a minute for it).
        with contextlib.closing(sqlite3.connect(data / "imagegate.db")) as db, db:
            db.execute(
                "UPDATE outbox_events SET created_at = datetime(created_at, '-5 minutes')"
                " WHERE seq = ?",
                (row.seq,),
            )

        server = ServerProcess(data, args=(), env=env).start()
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            wait_until(
                lambda: handled(c, EventType.ACCOUNT_DELETED, "error") >= 1,
                "the event offered again after the restart",
            )
            assert outbox(data, account.id)[-1].published_at is None
            # Late events are "degraded", never a reason for 503: the API still works.
            health = c.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"
            assert health.json()["checks"] == {
                "database": "ok",
                "storage": "ok",
                "codec": "ok",
                "events": "degraded",
            }
            samples = metric_samples(c.get("/metrics").text)
            assert metric(samples, "imagegate_outbox_depth") == 1
            assert metric(samples, "imagegate_outbox_oldest_age_seconds") >= 300
            shutil.rmtree(obstacle)
            wait_until(
                lambda: outbox(data, account.id)[-1].published_at is not None,
                "the event published",
            )
            assert handled(c, EventType.ACCOUNT_DELETED, "ok") == 1
            health = c.get("/healthz")
            assert (health.status_code, health.json()["checks"]["events"]) == (200, "ok")
            samples = metric_samples(c.get("/metrics").text)
            assert metric(samples, "imagegate_outbox_depth") == 0
            assert metric(samples, "imagegate_outbox_oldest_age_seconds") == 0
        assert purge_rows(data, account.id) == set()
        assert [p.name for p in (data / "images").iterdir() if not p.name.startswith(".")] == []
    finally:
        server.kill()
