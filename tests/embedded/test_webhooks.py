"""Webhooks against a real embedded server and a real receiver on loopback (an HTTP server in
this process): registration and its refusals (SSRF included), one user never seeing
another's, signed deliveries that verify (and fail to when altered), a receiver that is down
and then up getting every event once, and the limits of an attempt (no redirects, 1 KiB of
body, the timeout).

The server allows 127.0.0.0/8 (IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS) so the receiver can be
reached; a second server allows nothing and shows the refusals. Retries start after 0.05 s
(IMAGEGATE_WEBHOOK_RETRY_BASE_SECONDS; the schedule's later steps scale with it: 3 s, 18 s…).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from imagegate.events.envelope import ALL_TYPES, EventType
from tests.conftest import Account, register_and_login
from tests.support import images
from tests.support.server import ServerProcess, free_port

TIMEOUT_SECONDS = 2  # the server's webhook timeout: the stalling receiver is cut off after it


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: _ReceiverServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with self.server.lock:
            self.server.received.append(received)
        try:
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "/redirect-target")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.startswith("/huge"):
                payload = b"<error>" + b"x" * 200_000
                self.send_response(500)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            elif self.path.startswith("/stall"):
                self.server.release.wait(60)
            else:
                self.send_response(204)
                self.end_headers()
        except OSError:
            pass  # the sender hung up (as it should after 1 KiB, or at its timeout)

    def log_message(self, *_: Any) -> None:
        pass


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    received: list[Received]
    lock: threading.Lock
    release: threading.Event


class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST. Paths choose the answer:
    /redirect → 302, /huge → 500 with 200 kB of body, /stall → none, anything else → 204."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server: _ReceiverServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        server = _ReceiverServer(("127.0.0.1", self.port), _Handler)
        server.received, server.lock, server.release = [], threading.Lock(), threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.release.set()
            self.server.shutdown()
            self.server.server_close()

    def received(self, path: str | None = None) -> list[Received]:
        if self.server is None:
            return []
        with self.server.lock:
            return [r for r in self.server.received if path is None or r.path == path]


@contextlib.contextmanager
def receiving(port: int | None = None) -> Iterator[Receiver]:
    receiver = Receiver(port).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def wait_until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "IMAGEGATE_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "IMAGEGATE_WEBHOOKS_PER_USER": "4",
    }
    started = ServerProcess(tmp_path_factory.mktemp("hooks") / "data", args=(), env=env).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    started = ServerProcess(tmp_path_factory.mktemp("strict") / "data", args=()).start()
    yield started
    started.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def create(
    c: httpx.Client, account: Account, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url} if events is None else {"url": url, "events": events}
    r = c.post("/v1/webhooks", json=body, headers=account.auth)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def deliveries(c: httpx.Client, account: Account, webhook_id: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=account.auth)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def upload(c: httpx.Client, account: Account, seed: int = 0) -> str:
    # A random tail after the picture: every upload is new (the same bytes again would be the
    # first image, with no event).
    data = images.jpeg(48, 32, seed=seed) + os.urandom(16)
    r = c.post("/v1/upload", content=data, headers=account.auth)
    assert r.status_code == 201, r.text
    return str(r.json()["filename"])


def test_register_list_and_delete_and_nobody_sees_anyone_else_s(client: httpx.Client) -> None:
    alice, bob = register_and_login(client), register_and_login(client)
    stored = create(client, alice, "http://127.0.0.1:9/stored", [EventType.IMAGE_STORED] * 2)
    every = create(client, alice, "http://127.0.0.1:9/every")
    assert stored["events"] == [EventType.IMAGE_STORED]  # duplicates dropped
    assert every["events"] is None  # every type, including later ones
    for hook in (stored, every):
        assert str(uuid.UUID(hook["id"])) == hook["id"]
        assert hook["secret"].startswith("whsec_")
        assert hook["created_at"]
    assert stored["secret"] != every["secret"]

    listed = client.get("/v1/webhooks", headers=alice.auth)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [h["id"] for h in items] == [stored["id"], every["id"]]
    assert all("secret" not in h for h in items)
    assert "whsec_" not in listed.text

    # Bob sees none of them, and cannot touch them: 404 as if they did not exist.
    assert client.get("/v1/webhooks", headers=bob.auth).json() == {"items": []}
    assert client.delete(f"/v1/webhooks/{stored['id']}", headers=bob.auth).status_code == 404
    assert (
        client.get(f"/v1/webhooks/{stored['id']}/deliveries", headers=bob.auth).status_code == 404
    )
    # Without a token: 401.
    assert client.get("/v1/webhooks").status_code == 401
    assert client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"}).status_code == 401

    assert client.delete(f"/v1/webhooks/{stored['id']}", headers=alice.auth).status_code == 204
    assert client.delete(f"/v1/webhooks/{stored['id']}", headers=alice.auth).status_code == 404
    assert client.delete("/v1/webhooks/not-an-id", headers=alice.auth).status_code == 404
    assert [h["id"] for h in client.get("/v1/webhooks", headers=alice.auth).json()["items"]] == [
        every["id"]
    ]


def test_an_account_has_at_most_its_share_of_webhooks(client: httpx.Client) -> None:
    account = register_and_login(client)
    hooks = [create(client, account, f"http://127.0.0.1:9/{n}") for n in range(4)]
    r = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/5"}, headers=account.auth)
    assert r.status_code == 409
    assert r.json() == {"error": "an account may have at most 4 webhooks; delete one first"}
    assert len(client.get("/v1/webhooks", headers=account.auth).json()["items"]) == 4
    assert client.delete(f"/v1/webhooks/{hooks[0]['id']}", headers=account.auth).status_code == 204
    create(client, account, "http://127.0.0.1:9/5")


REFUSED: list[tuple[object, str]] = [
    ({"url": "http://example.com/", "events": ["imagegate.image.uploaded"]}, "unknown event"),
    ({"url": "http://example.com/", "events": []}, "at least one event type"),
    ({"url": "ftp://example.com/"}, "http:// or https://"),
    ({"url": "javascript:alert(1)"}, "http:// or https://"),
    ({"url": "https://user:secret@example.com/"}, "user name or password"),
    ({"url": "http://127.0.0.1/"}, "loopback"),
    ({"url": "http://127.0.0.1:8080/"}, "loopback"),
    ({"url": "http://[::1]/"}, "loopback"),
    ({"url": "http://[::ffff:127.0.0.1]/"}, "loopback"),
    ({"url": "http://localhost/"}, "loopback"),
    ({"url": "http://169.254.169.254/latest/meta-data/"}, "cloud metadata"),
    ({"url": "http://10.1.2.3/"}, "private"),
    ({"url": "http://192.168.0.1/"}, "private"),
    ({"url": "http://0.0.0.0/"}, "unspecified"),
    ({"url": "http://no-such-host.invalid/"}, "does not resolve"),
    ({"url": "http://example.com/" + "a" * 2048}, "at most 2048"),
    ({"url": 5}, "url"),
    ({}, "url"),
    ({"url": "http://example.com/", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(("body", "why"), REFUSED)
def test_refused_registrations_say_why_and_store_nothing(
    strict_server: ServerProcess, body: object, why: str
) -> None:
    with httpx.Client(base_url=strict_server.base_url, timeout=60) as c:
        account = register_and_login(c)
        r = c.post("/v1/webhooks", json=body, headers=account.auth)
        assert r.status_code == 422, r.text
        message = r.json()["error"]
        assert why in message, message
        if why == "unknown event":
            assert all(t in message for t in ALL_TYPES), message  # it names the allowed ones
        if "localhost" in str(body):
            assert "127.0.0.1" not in message  # the kind of address, never the address
        assert c.get("/v1/webhooks", headers=account.auth).json() == {"items": []}


def test_malformed_bodies_are_client_errors(client: httpx.Client) -> None:
    account = register_and_login(client)
    headers = {**account.auth, "content-type": "application/json"}
    for raw in (b"{", b'{"url": "http://127.0.0.1:9/\\ud800"}', b"\xff\xfe", b"[]"):
        r = client.post("/v1/webhooks", content=raw, headers=headers)
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert "error" in r.json()
    assert client.get("/v1/webhooks", headers=account.auth).json() == {"items": []}


def test_an_upload_arrives_once_signed_and_the_signature_can_fail(client: httpx.Client) -> None:
    account = register_and_login(client)
    with receiving() as receiver:
        stored_only = create(client, account, receiver.url("/stored"), [EventType.IMAGE_STORED])
        name = upload(client, account)
        wait_until(lambda: len(receiver.received("/stored")) >= 1, "the delivery")
        [got] = receiver.received("/stored")

        # Signed as Standard Webhooks says, verified with the secret shown at creation.
        event = Webhook(stored_only["secret"]).verify(got.body, got.headers)
        assert event["type"] == EventType.IMAGE_STORED
        assert event["specversion"] == "1.0"
        assert event["subject"] == f"images/{name}"
        assert event["data"]["name"] == name
        assert got.headers["webhook-id"] == event["id"]
        assert got.headers["content-type"] == "application/json"
        assert "imagegate" in got.headers["user-agent"]
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 300
        # The check can fail: an altered body, or another secret, does not verify.
        tampered = got.body.replace(name.encode(), b"00000000-0000-4000-8000-000000000000.jpg")
        assert tampered != got.body
        with pytest.raises(WebhookVerificationError):
            Webhook(stored_only["secret"]).verify(tampered, got.headers)
        every = create(client, account, receiver.url("/every"))
        with pytest.raises(WebhookVerificationError):
            Webhook(every["secret"]).verify(got.body, got.headers)

        wait_until(
            lambda: deliveries(client, account, stored_only["id"])[0]["status"] == "delivered",
            "the delivery recorded",
        )
        [record] = deliveries(client, account, stored_only["id"])
        assert record["event_id"] == event["id"]
        assert record["event_type"] == EventType.IMAGE_STORED
        assert (record["attempts"], record["last_status"], record["last_error"]) == (1, 204, None)
        assert record["next_attempt_at"] is None

        # A delete reaches the webhook for every type; once it has (both webhooks' deliveries
        # are queued together), the image.stored-only webhook has queued nothing more.
        assert client.delete(f"/v1/images/{name}", headers=account.auth).status_code == 204
        wait_until(lambda: len(receiver.received("/every")) >= 1, "the delete's delivery")
        [deleted] = receiver.received("/every")
        assert Webhook(every["secret"]).verify(deleted.body, deleted.headers)["type"] == (
            EventType.IMAGE_DELETED
        )
        assert len(deliveries(client, account, stored_only["id"])) == 1
        assert len(receiver.received("/stored")) == 1


def test_a_receiver_down_then_up_gets_every_event_once(client: httpx.Client) -> None:
    account = register_and_login(client)
    receiver = Receiver()  # not started: nothing listens on its port yet
    hook = create(client, account, receiver.url("/hook"))
    names = [upload(client, account, seed=n) for n in range(3)]

    def failed_while_down() -> bool:
        items = deliveries(client, account, hook["id"])
        return len(items) == 3 and all(
            d["attempts"] >= 1 and d["status"] == "pending" for d in items
        )

    wait_until(failed_while_down, "an attempt on each delivery while the receiver is down")
    for d in deliveries(client, account, hook["id"]):
        assert d["last_status"] is None
        assert d["last_error"].startswith("cannot connect"), d
        assert d["next_attempt_at"] is not None

    receiver.start()
    try:
        wait_until(
            lambda: {d["status"] for d in deliveries(client, account, hook["id"])} == {"delivered"},
            "every delivery once the receiver is back",
        )
        got = receiver.received("/hook")
    finally:
        receiver.stop()
    ids = [r.headers["webhook-id"] for r in got]
    events = [Webhook(hook["secret"]).verify(r.body, r.headers) for r in got]
    assert sorted(ids) == sorted(d["event_id"] for d in deliveries(client, account, hook["id"]))
    assert len(ids) == len(set(ids)) == 3  # every event exactly once, by webhook-id
    assert sorted(e["data"]["name"] for e in events) == sorted(names)
    assert all(d["attempts"] >= 2 for d in deliveries(client, account, hook["id"]))


def test_redirects_are_not_followed_bodies_are_cut_and_timeouts_recorded(
    client: httpx.Client,
) -> None:
    account = register_and_login(client)
    with receiving() as receiver:
        hooks = {
            path: create(client, account, receiver.url(path), [EventType.IMAGE_STORED])
            for path in ("/redirect", "/huge", "/stall")
        }
        upload(client, account)

        def attempted(path: str) -> dict[str, Any] | None:
            items = deliveries(client, account, hooks[path]["id"])
            return items[0] if items and items[0]["attempts"] >= 1 else None

        wait_until(lambda: all(attempted(p) for p in hooks), "an attempt on each webhook")
        redirect, huge, stall = (attempted(p) for p in ("/redirect", "/huge", "/stall"))
        assert redirect is not None and huge is not None and stall is not None

        assert redirect["status"] == "pending" and redirect["last_status"] == 302
        assert "not followed" in redirect["last_error"]
        assert receiver.received("/redirect-target") == []

        assert huge["last_status"] == 500
        assert huge["last_error"].startswith("HTTP 500 Internal Server Error: <error>xxx")
        assert len(huge["last_error"]) <= 1024

        assert stall["last_status"] is None
        assert stall["last_error"] == f"timed out: no answer within {TIMEOUT_SECONDS} s"

        for hook in hooks.values():
            r = client.delete(f"/v1/webhooks/{hook['id']}", headers=account.auth)
            assert r.status_code == 204


def test_a_deleted_webhook_s_pending_deliveries_are_gone(
    server: ServerProcess, client: httpx.Client
) -> None:
    account = register_and_login(client)
    receiver = Receiver()  # never started
    hook = create(client, account, receiver.url("/hook"))
    upload(client, account)
    wait_until(
        lambda: any(d["attempts"] >= 1 for d in deliveries(client, account, hook["id"])),
        "a failed attempt",
    )
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=account.auth).status_code == 204
    # The loop sends only rows of the queue, and the webhook's are gone with it.
    with contextlib.closing(sqlite3.connect(server.data_dir / "imagegate.db")) as db:
        left = db.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = ?", (hook["id"],)
        ).fetchone()[0]
    assert left == 0
    r = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=account.auth)
    assert r.status_code == 404
    assert json.loads(r.text) == {"error": "no such webhook"}


def test_a_deleted_account_s_webhooks_get_its_last_events_then_close(
    server: ServerProcess, client: httpx.Client
) -> None:
    account = register_and_login(client)
    with receiving() as receiver:
        hook = create(
            client,
            account,
            receiver.url("/last"),
            [EventType.IMAGE_STORED, EventType.ACCOUNT_DELETED],
        )
        name = upload(client, account)
        r = client.request(
            "DELETE", "/v1/user", json={"password": account.password}, headers=account.auth
        )
        assert r.status_code == 204, r.text
        wait_until(lambda: len(receiver.received("/last")) >= 2, "both events")
        got = [Webhook(hook["secret"]).verify(x.body, x.headers) for x in receiver.received()]
    # Two deliveries in flight at once: their order of arrival is not the events' order.
    by_type = {e["type"]: e for e in got}
    assert len(got) == 2 and set(by_type) == {EventType.IMAGE_STORED, EventType.ACCOUNT_DELETED}
    assert by_type[EventType.IMAGE_STORED]["data"]["name"] == name
    assert by_type[EventType.ACCOUNT_DELETED]["subject"].endswith(account.id)
    # The webhook is closed, not gone: the delivery loop removes it once the retention is over.
    with contextlib.closing(sqlite3.connect(server.data_dir / "imagegate.db")) as db:
        closed = db.execute("SELECT closed_at FROM webhooks WHERE id = ?", (hook["id"],)).fetchone()
    assert closed is not None and closed[0] is not None


def test_a_retry_comes_round_while_other_events_keep_the_loop_busy(client: httpx.Client) -> None:
    """Every hand-over and finished attempt wakes the delivery loop early; its look for due
    retries must still come round while another account's events flow without a pause."""
    waiting, busy = register_and_login(client), register_and_login(client)
    down = Receiver()  # not started yet
    hook = create(client, waiting, down.url("/retry"))
    with receiving() as flowing:
        create(client, busy, flowing.url("/flow"))
        upload(client, waiting)
        wait_until(
            lambda: any(d["attempts"] >= 1 for d in deliveries(client, waiting, hook["id"])),
            "a failed attempt",
        )
        down.start()
        try:
            deadline, seed = time.monotonic() + 60, 0
            while not down.received("/retry"):  # the other account's uploads never stop
                assert time.monotonic() < deadline, "the retry never came while events flowed"
                seed += 1
                upload(client, busy, seed=seed % 3)
                # Apart enough that each delivery has the loop's room (no queueing for any
                # loop, which would wake the claim), close enough to end every 1 s wait early.
                time.sleep(0.3)
        finally:
            down.stop()
        assert len(flowing.received("/flow")) >= 1
