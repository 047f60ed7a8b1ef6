"""Exactly once, counted where it shows: at webhook receivers on loopback, in the bucket, and on
the topics — through the gateway of the real stack, with a broker killed or a receiver down.

The receivers are HTTP servers in this process (tests/embedded/test_webhooks.py's ``Receiver``,
answering 204); the stack's services allow webhooks to 127.0.0.0/8. Deliveries are at least
once, so a receiver may see an event twice: every count here is of distinct ``webhook-id``\\ s,
and nothing is missing and nothing unexpected. Every delivery's signature is checked by hand as
the Standard Webhooks specification says (:func:`signature_valid`), and that checker is shown to
refuse a wrong secret, a changed body, id or timestamp, so a bad signature fails the test.
Each test puts what it killed, stopped or reconfigured back in a ``finally``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from imagegate.events.envelope import EventType
from tests.conftest import Account, register_and_login
from tests.embedded.test_webhooks import Received, Receiver, create, deliveries
from tests.stack.conftest import Stack, stack_module
from tests.stack.test_events_kafka import (
    CREATED,
    DELETED,
    REMOVED,
    STORED,
    Record,
    Tail,
    delete_account,
    first_of_each,
    group_lag,
    has,
    metric,
    outbox_depth,
    stored_names,
    upload,
    wait_for,
    worker_urls,
)
from tests.stack.test_kafka_cluster import _wait_in_sync
from tests.support.server import free_port

pytestmark = pytest.mark.slow

KILLED = "kafka-2"
WORKERS = ("worker-1", "worker-2")
SIGNATURE_TOLERANCE = 300  # seconds between a delivery's timestamp and now (the specification's)
IMAGE_EVENTS = (STORED, REMOVED)
# The burst: accounts made before it, accounts registered during it; the deleted ones (one of
# each kind); each account's uploads before and after the broker dies.
EARLY, LATE = 3, 2
GONE = frozenset({2, 4})
UPLOADS_BEFORE, UPLOADS_AFTER = 2, 2
# The receiver that is down: retries 1 s, then 60 s after a failure (then 360 s).
RETRY_BASE = 1.0
DOWN_SECONDS = 30.0


# --- signatures ----------------------------------------------------------------------------


def signature_valid(
    secret: str, headers: Mapping[str, str], body: bytes, *, since: float | None = None
) -> bool:
    """Standard Webhooks verification by hand: HMAC-SHA256 keyed with the base64 part of the
    ``whsec_`` secret over ``{webhook-id}.{webhook-timestamp}.{body}``, compared in constant
    time with each ``v1,`` signature of ``webhook-signature``. The timestamp must be within
    five minutes of now, or (``since``, for deliveries checked a while after they came) no
    earlier than ``since`` and not in the future."""
    if not secret.startswith("whsec_"):
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        return False
    now = time.time()
    earliest = now - SIGNATURE_TOLERANCE if since is None else int(since) - 1
    if not earliest <= int(stamp) <= now + 1:
        return False
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for entry in headers.get("webhook-signature", "").split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


def assert_checker_refuses_forgeries(secret: str, delivery: Received, since: float) -> None:
    """The checker can fail: a wrong secret, one changed byte of the body, another id or
    another timestamp each make a genuine delivery's signature invalid."""
    headers, body = delivery.headers, delivery.body
    assert signature_valid(secret, headers, body, since=since)
    wrong = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    assert not signature_valid(wrong, headers, body, since=since)
    assert not signature_valid(secret, headers, body[:-1] + bytes([body[-1] ^ 1]), since=since)
    forged_id = {**headers, "webhook-id": str(uuid.uuid4())}
    assert not signature_valid(secret, forged_id, body, since=since)
    forged_time = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}
    assert not signature_valid(secret, forged_time, body, since=since - 10)
    assert not signature_valid(secret, headers, body, since=time.time() + 5)  # too old


def verified_ids(got: list[Received], secret: str, owner: str, since: float) -> set[str]:
    """The distinct webhook-ids of ``got``, each delivery's signature checked (signed no
    earlier than ``since``), its body the event of that id and of ``owner``."""
    for r in got:
        assert signature_valid(secret, r.headers, r.body, since=since), f"bad: {r.headers}"
        event = json.loads(r.body)
        assert event["id"] == r.headers["webhook-id"]
        assert event["ownerid"] == owner
    return {r.headers["webhook-id"] for r in got}


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def tail(stack: Stack) -> Iterator[Tail]:
    """The event topics from their ends as of the test's start."""
    t = Tail()
    yield t
    t.close()


def ids_of(records: list[Record], types: tuple[str, ...]) -> set[str]:
    return {str(r.event["id"]) for r in records if r.type in types}


def types_of(records: list[Record]) -> Counter[str]:
    """How many distinct events of each type (a relay may publish one twice)."""
    return Counter(r.type for r in first_of_each(records))


def handler_errors() -> float:
    return sum(metric(u, "imagegate_events_handled_total", outcome="error") for u in worker_urls())


def restart_workers(stack: Stack, env: dict[str, str] | None = None) -> None:
    """Both workers stopped and started again, with ``env`` added to their settings."""
    for name in WORKERS:
        stack.run("stop", name)
        stack.run("start", name, env=env)


@dataclass
class Subject:
    """One account of the burst, its webhook (every type) and what it did."""

    index: int
    account: Account
    hook: dict[str, Any]
    gone: bool
    names: list[str] = field(default_factory=list)  # uploaded
    removed: list[str] = field(default_factory=list)  # deleted one by one

    @property
    def path(self) -> str:
        return f"/hook/{self.index}"

    @property
    def kept_names(self) -> set[str]:
        return set(self.names) - set(self.removed)


def subscribe(stack: Stack, receiver: Receiver, index: int, account: Account) -> Subject:
    with stack.client() as c:
        hook = create(c, account, receiver.url(f"/hook/{index}"))
    return Subject(index, account, hook, gone=index in GONE)


def uploads(stack: Stack, s: Subject, count: int) -> None:
    with stack.client() as c:
        for _ in range(count):
            s.names.append(upload(c, s.account, 1000 * s.index + len(s.names)))


def second_half(stack: Stack, receiver: Receiver, index: int, s: Subject | None) -> Subject:
    """The burst once the broker is dead: a newcomer registers and subscribes; every account
    uploads; a kept account deletes its first and its last image, a gone one its account."""
    if s is None:
        with stack.client() as c:
            s = subscribe(stack, receiver, index, register_and_login(c))
        uploads(stack, s, UPLOADS_BEFORE)
    uploads(stack, s, UPLOADS_AFTER)
    with stack.client() as c:
        if s.gone:
            delete_account(c, s.account)
        else:
            for name in (s.names[0], s.names[-1]):
                r = c.delete(f"/v1/images/{name}", headers=s.account.auth)
                assert r.status_code == 204, r.text
                s.removed.append(name)
    return s


def expected_types(s: Subject) -> Counter[str]:
    if s.gone:
        return Counter({CREATED: 1, STORED: len(s.names), DELETED: 1})
    return Counter({CREATED: 1, STORED: len(s.names), REMOVED: len(s.removed)})


# --- tests ---------------------------------------------------------------------------------


def test_a_burst_with_a_broker_killed_takes_effect_exactly_once(stack: Stack, tail: Tail) -> None:
    """Registrations, uploads, image and account deletions from five accounts at once, most of
    them while a broker is dead (SIGKILL), then the broker back. On the topics each change is
    one event; at the receivers each kept account's webhook has each of its image events (by
    id, signed), none missing and none unexpected, and each deleted account's webhook its uploads
    and its account.deleted; the deleted accounts' objects are purged and the kept ones' remain,
    and no handler failed."""
    errors_before = handler_errors()
    started = time.time()
    receiver = Receiver().start()
    killed = False
    try:
        with stack.client() as c:
            early = [register_and_login(c) for _ in range(EARLY)]
        # Their creation handled before their webhooks exist: then it is not theirs to receive.
        tail.read_until(lambda rs: all(has(a.id, CREATED)(rs) for a in early))
        wait_for("the workers to handle the creations", lambda: group_lag() == 0)
        subjects = [subscribe(stack, receiver, i, a) for i, a in enumerate(early)]
        with ThreadPoolExecutor(EARLY) as pool:
            list(pool.map(lambda s: uploads(stack, s, UPLOADS_BEFORE), subjects))

        stack.run("kill", KILLED)
        killed = True
        with ThreadPoolExecutor(EARLY + LATE) as pool:
            halves = [pool.submit(second_half, stack, receiver, s.index, s) for s in subjects]
            halves += [
                pool.submit(second_half, stack, receiver, EARLY + i, None) for i in range(LATE)
            ]
            subjects = [f.result() for f in halves]
        # Published with the node still dead: two in-sync replicas are enough (min.insync).
        wait_for("the burst's events to be published", lambda: outbox_depth() == 0)
        node = next(n for n in stack_module().kafka.NODES if n.name == KILLED)
        assert not stack_module().CLUSTER.serving(node), f"{KILLED} is back already"
        stack.run("start", KILLED)
        killed = False

        # The topics: every change exactly one event (by id), however often it was published.
        def all_on_topics(records: list[Record]) -> bool:
            return all(
                types_of([r for r in records if r.key == s.account.id]) >= expected_types(s)
                for s in subjects
            )

        tail.read_until(all_on_topics, timeout=180)
        for s in subjects:
            assert types_of(tail.of(s.account.id)) == expected_types(s), s.index

        # The receivers: every event of each account after its webhook was made, by
        # webhook-id: a kept account's image events; a deleted account's uploads and its
        # account.deleted (its webhook outlives it until they are sent).
        kept = [s for s in subjects if not s.gone]
        expected = {
            s.index: ids_of(tail.of(s.account.id), (STORED, DELETED) if s.gone else IMAGE_EVENTS)
            for s in subjects
        }
        for s in subjects:
            assert len(expected[s.index]) == len(s.names) + len(s.removed) + int(s.gone)

        def all_delivered() -> bool:
            return all(
                expected[s.index] <= {r.headers["webhook-id"] for r in receiver.received(s.path)}
                for s in subjects
            )

        wait_for("every account's events at its receiver", all_delivered, timeout=180)
        with stack.client() as c:
            for s in kept:
                # Its account.created happened before its webhook existed: never delivered,
                # however late the worker handles it.
                listed = deliveries(c, s.account, s.hook["id"])
                listed_ids = [d["event_id"] for d in listed]
                assert len(listed_ids) == len(set(listed_ids)), listed  # one row per event
                assert set(listed_ids) == expected[s.index]
                assert {d["status"] for d in listed} == {"delivered"}, listed
                got = verified_ids(
                    receiver.received(s.path), s.hook["secret"], s.account.id, started
                )
                assert got == set(listed_ids), s.index  # none missing, none unexpected
        for s in subjects:
            if s.gone:
                got = verified_ids(
                    receiver.received(s.path), s.hook["secret"], s.account.id, started
                )
                assert got == expected[s.index], s.index  # none missing, none unexpected
        first = receiver.received(kept[0].path)[0]
        assert_checker_refuses_forgeries(kept[0].hook["secret"], first, started)
        assert not signature_valid(kept[1].hook["secret"], first.headers, first.body, since=started)
        assert {r.path for r in receiver.received()} <= {s.path for s in subjects}

        # The purge: the deleted accounts' objects gone, everything else as the owners left it.
        gone_names = {n for s in subjects if s.gone for n in s.names}
        wait_for("the purge", lambda: not gone_names & stored_names(stack), timeout=180)
        in_bucket = stored_names(stack)
        for s in kept:
            assert s.kept_names <= in_bucket
            assert not set(s.removed) & in_bucket
        wait_for("the worker group to catch up", lambda: group_lag() == 0, timeout=180)
        assert handler_errors() == errors_before
    finally:
        receiver.stop()
        if killed:
            stack.run("start", KILLED)
    _wait_in_sync(stack_module().CLUSTER.admin())  # the killed node rejoined every partition


def test_a_receiver_down_30_s_gets_every_event_once_signed_after_it_returns(
    stack: Stack, tail: Tail
) -> None:
    """A webhook to a loopback port where nothing listens: every delivery fails (cannot
    connect) and is retried; after 30 s the receiver starts there and gets each event, by
    webhook-id, with a valid signature; the listing says delivered after two or more attempts.

    The stack's workers run with the default retry base (5 s: the second retry would come
    5 min after the first), so both run with IMAGEGATE_WEBHOOK_RETRY_BASE_SECONDS=1 here
    (the second retry comes 60 s after the first failure) and get their settings back after."""
    with stack.client() as c:
        account = register_and_login(c)
    tail.read_until(has(account.id, CREATED))
    # Handled before the webhook exists, so the expected deliveries are the changes below.
    wait_for("the workers to handle the creation", lambda: group_lag() == 0)
    receiver = Receiver(free_port())  # reserved, closed: nothing listens there yet
    try:
        restart_workers(stack, {"IMAGEGATE_WEBHOOK_RETRY_BASE_SECONDS": str(RETRY_BASE)})
        with stack.client() as c:
            hook = create(c, account, receiver.url("/hook"))
            down_since = time.monotonic()
            names = [upload(c, account, seed) for seed in (2000, 2001, 2002)]
            r = c.delete(f"/v1/images/{names[1]}", headers=account.auth)
            assert r.status_code == 204, r.text
            tail.read_until(
                lambda rs: has(account.id, STORED, 3)(rs) and has(account.id, REMOVED)(rs)
            )
            mine = tail.of(account.id)
            expected = ids_of(mine, IMAGE_EVENTS)
            assert len(expected) == 4

            def listed() -> list[dict[str, Any]]:
                items = deliveries(c, account, hook["id"])
                # Nothing listens: no delivery can have succeeded, and none has given up.
                assert {d["status"] for d in items} <= {"pending"}, items
                return items

            def retried() -> bool:
                items = listed()
                return {d["event_id"] for d in items} == expected and all(
                    d["attempts"] >= 2 for d in items
                )

            wait_for("a retry of every delivery while the receiver is down", retried)
            for d in listed():
                assert d["last_status"] is None, d
                assert d["last_error"].startswith("cannot connect"), d
                assert d["next_attempt_at"] is not None, d
            wait_for(
                f"the receiver to have been down {DOWN_SECONDS:g} s",
                lambda: bool(listed()) and time.monotonic() - down_since >= DOWN_SECONDS,
            )
            # The next attempts are 60 s after the second failures: none has come yet.
            assert all(d["attempts"] == 2 for d in listed()), listed()
            back_at = time.time()
            receiver.start()
            wait_for(
                "every delivery once the receiver is back",
                lambda: {d["status"] for d in deliveries(c, account, hook["id"])} == {"delivered"},
            )
            final = deliveries(c, account, hook["id"])
    finally:
        receiver.stop()
        restart_workers(stack)
    got = receiver.received("/hook")
    # Every event, by id, each signed when it was sent (after the receiver came back).
    assert verified_ids(got, hook["secret"], account.id, back_at) == expected
    assert {d["event_id"] for d in final} == expected and len(final) == len(expected)
    for d in final:
        assert d["attempts"] >= 2 and d["last_status"] == 204 and d["last_error"] is None, d
    events = {r.headers["webhook-id"]: json.loads(r.body) for r in got}
    assert sorted(e["data"]["name"] for e in events.values() if e["type"] == STORED) == sorted(
        names
    )
    assert [e["data"]["name"] for e in events.values() if e["type"] == REMOVED] == [names[1]]
    assert_checker_refuses_forgeries(hook["secret"], got[0], back_at)


def test_a_webhook_subscribed_to_account_deleted_receives_it(stack: Stack, tail: Tail) -> None:
    started = time.time()
    receiver = Receiver().start()
    try:
        with stack.client() as c:
            account = register_and_login(c)
            hook = create(c, account, receiver.url("/deleted"), [EventType.ACCOUNT_DELETED])
            name = upload(c, account, 3000)
            delete_account(c, account)
        tail.read_until(has(account.id, DELETED))
        wait_for("the purge", lambda: name not in stored_names(stack))
        wait_for("the worker group to catch up", lambda: group_lag() == 0)
        # Handled (the offset is committed after every handler); a delivery goes out at once.
        wait_for("the account.deleted delivery", lambda: bool(receiver.received()), timeout=15)
    finally:
        receiver.stop()
    [got] = {r.headers["webhook-id"]: r for r in receiver.received()}.values()
    assert verified_ids([got], hook["secret"], account.id, started) == ids_of(
        tail.of(account.id), (DELETED,)
    )
