"""Events on the real Kafka cluster of the stack: the relay, the worker, and their failures.

Events are read back from the topics with the admin user, from the topics' ends as they were
before each test's changes (no consumer group), and picked by key (the owner's id): other
tests' events on the same topics do not disturb them. Each test puts what it stopped or
killed back in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from imagegate.events.feed import is_heartbeat
from tests.conftest import Account, register_and_login
from tests.stack.conftest import Stack, stack_module
from tests.support import images

pytestmark = pytest.mark.slow

ACCOUNTS, IMAGES = "imagegate.accounts", "imagegate.images"
CREATED, DELETED = "imagegate.account.created", "imagegate.account.deleted"
STORED, REMOVED = "imagegate.image.stored", "imagegate.image.deleted"
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
DEADLINE = 90.0  # generous: a deadline for an event, never a measure of speed


# --- helpers -------------------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def relay_urls() -> list[str]:
    return [f"http://127.0.0.1:{p}" for p in stack_module().RELAY_PORTS]


def worker_urls() -> list[str]:
    return [f"http://127.0.0.1:{p}" for p in stack_module().WORKER_PORTS]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples at ``url``/metrics that carry ``labels`` (0 if none)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def try_metric(url: str, name: str, **labels: str) -> float | None:
    try:
        return metric(url, name, **labels)
    except httpx.HTTPError:
        return None


def health(url: str) -> httpx.Response:
    return httpx.get(url + "/healthz", timeout=10)


def reports(url: str, events: str) -> Callable[[], bool]:
    """Does ``url``/healthz say ``checks.events == events``?"""

    def check() -> bool:
        try:
            return bool(health(url).json()["checks"].get("events") == events)
        except httpx.HTTPError:
            return False

    return check


def active_relay() -> str:
    """The URL of the relay that holds the lease (exactly one does, once one has taken it)."""
    active: list[str] = []

    def one() -> bool:
        active[:] = [u for u in relay_urls() if try_metric(u, "imagegate_relay_active") == 1]
        assert len(active) <= 1, f"relays holding the lease at once: {active}"
        return len(active) == 1

    wait_for("a relay to hold the lease", one)
    return active[0]


def outbox_depth() -> float:
    depth = None
    for url in relay_urls():
        depth = try_metric(url, "imagegate_outbox_depth")
        if depth is not None:
            return depth
    raise AssertionError("no relay answers /metrics")


def upload(c: httpx.Client, account: Account, seed: int) -> str:
    r = c.post("/v1/upload", content=images.jpeg(100, 80, seed=seed), headers=account.auth)
    assert r.status_code == 201, r.text
    name: str = r.json()["filename"]
    return name


def delete_account(c: httpx.Client, account: Account) -> None:
    r = c.request("DELETE", "/v1/user", headers=account.auth, json={"password": account.password})
    assert r.status_code == 204, r.text


def stored_names(stack: Stack) -> set[str]:
    """The image names in the bucket (``public/<name>`` or ``private/<name>``)."""
    return {key.rsplit("/", 1)[-1] for key in stack.object_keys()}


def admin_config(**extra: Any) -> dict[str, Any]:
    # log_level 2: not every refused connection while the test has the brokers down
    config: dict[str, Any] = stack_module().CLUSTER.client_config(
        "admin", **{"log_level": 2, **extra}
    )
    return config


def start_kafka(stack: Stack) -> None:
    """All nodes at once: a lone KRaft node waits for a quorum that the others make."""
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            stack.run("start", name)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in KAFKA_NODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    raw: bytes
    headers: dict[str, bytes]

    @property
    def event(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.raw)
        return body

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def name(self) -> str:
        """The image name of an image event."""
        return str(self.event["data"]["name"])


class Tail:
    """The event topics from their ends as of construction, read with the admin user."""

    def __init__(self) -> None:
        self.consumer = Consumer(
            admin_config(
                **{
                    "group.id": f"imagegate-test-{uuid.uuid4().hex}",  # never joined or committed
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                }
            )
        )
        assignment = []
        for topic in (ACCOUNTS, IMAGES):
            meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
            for p in meta.partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                assignment.append(TopicPartition(topic, p, high))
        self.consumer.assign(assignment)
        self.records: list[Record] = []

    def of(self, key: str) -> list[Record]:
        return [r for r in self.records if r.key == key]

    def read_until(
        self, done: Callable[[list[Record]], bool], timeout: float = DEADLINE
    ) -> list[Record]:
        """Consume until ``done(records so far)``; returns every record read."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            assert time.monotonic() < deadline, f"events not on the topics: {self.summary()}"
            msg = self.consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() != KafkaError.TOPIC_AUTHORIZATION_FAILED, err
                continue
            if is_heartbeat(msg.headers()):  # the relay's, for the replicas' account feed
                continue
            self.records.append(
                Record(
                    msg.topic() or "",
                    msg.partition() or 0,
                    msg.offset() or 0,
                    (msg.key() or b"").decode(),
                    msg.value() or b"",
                    {k: _bytes(v) for k, v in list(msg.headers() or [])},  # type: ignore[misc]
                )
            )
        return self.records

    def summary(self) -> list[tuple[str, str]]:
        return [(r.key[:8], r.type) for r in self.records][-40:]

    def close(self) -> None:
        self.consumer.close()


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


@pytest.fixture
def tail(stack: Stack) -> Iterator[Tail]:
    t = Tail()
    yield t
    t.close()


def first_of_each(records: list[Record]) -> list[Record]:
    """The records in order, each event id once (a relay may publish an event twice)."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.event["id"] not in seen:
            seen.add(r.event["id"])
            out.append(r)
    return out


def has(key: str, type: str, count: int = 1) -> Callable[[list[Record]], bool]:
    def done(records: list[Record]) -> bool:
        ids = {r.event["id"] for r in records if r.key == key and r.type == type}
        return len(ids) >= count

    return done


def group_lag() -> int:
    """Messages the worker group has not committed past, over every partition (-1 while the
    cluster cannot tell, e.g. its group coordinator is moving after a restart)."""
    consumer = Consumer(admin_config(**{"group.id": "imagegate-worker"}))
    try:
        parts = []
        for topic in (ACCOUNTS, IMAGES):
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            parts += [TopicPartition(topic, p) for p in meta.partitions]
        committed = consumer.committed(parts, timeout=30)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=30
            )
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    except KafkaException:
        return -1
    finally:
        consumer.close()


# --- tests ---------------------------------------------------------------------------------


def test_gateway_changes_are_events_in_order_per_user_and_purged(stack: Stack, tail: Tail) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        names = [upload(c, account, seed) for seed in range(3)]
        deleted = c.delete(f"/v1/images/{names[0]}", headers=account.auth)
        assert deleted.status_code == 204, deleted.text
        assert set(names[1:]) <= stored_names(stack)
        delete_account(c, account)
    tail.read_until(has(account.id, DELETED))
    tail.read_until(has(account.id, REMOVED))
    tail.read_until(lambda _: len([r for r in tail.of(account.id) if r.topic == IMAGES]) >= 4)
    mine = first_of_each(tail.of(account.id))
    on_accounts = [r for r in mine if r.topic == ACCOUNTS]
    on_images = [r for r in mine if r.topic == IMAGES]
    assert [r.type for r in on_accounts] == [CREATED, DELETED]
    assert [(r.type, r.name) for r in on_images] == [
        *((STORED, n) for n in names),
        (REMOVED, names[0]),
    ]
    # One key, one partition per topic: that is what keeps a user's events in order.
    assert len({r.partition for r in on_images}) == 1
    assert len({r.partition for r in on_accounts}) == 1
    for r in mine:
        body = r.event
        assert body["specversion"] == "1.0"
        assert body["source"] and body["time"] and body["subject"]
        assert r.headers["content-type"].startswith(b"application/cloudevents+json")
        assert account.password.encode() not in r.raw
        assert account.token.encode() not in r.raw
    assert on_accounts[1].event["data"]["images"] == 2
    # The worker purges the deleted account's objects.
    wait_for("the account's objects to be purged", lambda: not set(names) & stored_names(stack))


def test_relay_killed_mid_batch_loses_nothing(stack: Stack, tail: Tail) -> None:
    """Brokers paused (SIGSTOP), so the batch is produced but never acknowledged; the relay is
    killed then. The events may reach the topic twice; each arrives, and the duplicate
    account deletion changes nothing more."""
    module = stack_module()
    stack.run("stop", "relay-2")
    paused: list[int] = []
    try:
        relay = relay_urls()[0]
        wait_for(
            "relay-1 to hold the lease", lambda: try_metric(relay, "imagegate_relay_active") == 1
        )
        errors_before = sum(
            metric(u, "imagegate_events_handled_total", outcome="error") for u in worker_urls()
        )
        with stack.client() as c:
            keep = register_and_login(c)
            kept = upload(c, keep, 100)
            gone = register_and_login(c)
            names = [upload(c, gone, seed) for seed in range(101, 104)]
            wait_for("the events to be published", lambda: outbox_depth() == 0)
            for name in KAFKA_NODES:
                pid = module.COMPONENTS[name].pid()
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                paused.append(pid)
            delete_account(c, gone)  # committed; the relay now produces it and waits
            more = [upload(c, keep, seed) for seed in range(104, 106)]
            wait_for(
                "the relay to have a batch in flight",
                lambda: metric(relay, "imagegate_relay_in_flight") >= 1,
            )
            stack.run("kill", "relay-1")
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        paused.clear()
        stack.run("start", "relay-1")
        wait_for("the outbox to drain", lambda: outbox_depth() == 0)
        tail.read_until(has(gone.id, DELETED))
        tail.read_until(has(keep.id, STORED, 3))
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        stack.run("start", "relay-1")
        stack.run("start", "relay-2")
    kept_events = [r for r in first_of_each(tail.of(keep.id)) if r.type == STORED]
    assert [r.name for r in kept_events] == [kept, *more]
    wait_for("the purge", lambda: not set(names) & stored_names(stack))
    # Duplicates are harmless: the other account is untouched, and no handler failed.
    assert {kept, *more} <= stored_names(stack)
    wait_for("the worker group to catch up", lambda: group_lag() == 0)
    errors_after = sum(
        metric(u, "imagegate_events_handled_total", outcome="error") for u in worker_urls()
    )
    assert errors_after == errors_before


def test_two_relays_one_publishes_and_the_other_takes_over(stack: Stack, tail: Tail) -> None:
    first = active_relay()
    standby = next(u for u in relay_urls() if u != first)
    killed = "relay-1" if first == relay_urls()[0] else "relay-2"
    published = "imagegate_events_published_total"
    with stack.client() as c:
        before = metric(first, published), metric(standby, published)
        account = register_and_login(c)
        name = upload(c, account, 200)
        tail.read_until(has(account.id, STORED))
        # The account's creation and its upload, both by the lease holder; none by the other.
        assert metric(first, published) >= before[0] + 2
        assert metric(standby, published) == before[1]
        assert metric(standby, "imagegate_relay_active") == 0
        try:
            stack.run("kill", killed)
            wait_for(
                "the standby to take the lease",
                lambda: try_metric(standby, "imagegate_relay_active") == 1,
            )
            later = upload(c, account, 201)
            tail.read_until(has(account.id, STORED, 2))
            assert metric(standby, published) >= before[1] + 1
        finally:
            stack.run("start", killed)
    # Back, the killed relay stands by.
    wait_for(
        "both relays to answer", lambda: all(health(u).status_code == 200 for u in relay_urls())
    )
    assert active_relay() == standby
    assert [r.name for r in first_of_each(tail.of(account.id)) if r.type == STORED] == [
        name,
        later,
    ]


def test_worker_killed_resumes_from_committed_offsets(stack: Stack) -> None:
    stack.run("stop", "worker-2")
    try:
        with stack.client() as c:
            keep = register_and_login(c)
            kept = [upload(c, keep, seed) for seed in (300, 301)]
            gone = register_and_login(c)
            names = [upload(c, gone, seed) for seed in (302, 303, 304)]
            wait_for("worker-1 to catch up", lambda: group_lag() == 0)
            stack.run("kill", "worker-1")
            delete_account(c, gone)
            wait_for("the deletion to be published", lambda: outbox_depth() == 0)
            wait_for("the lag to show", lambda: group_lag() >= 1)  # nobody consumed it
            assert set(names) <= stored_names(stack)  # and nobody purged: the worker does
            stack.run("start", "worker-1")
            worker = worker_urls()[0]
            wait_for("the purge", lambda: not set(names) & stored_names(stack))
            wait_for("worker-1 to catch up", lambda: group_lag() == 0)
            # It resumed where the group was, not from the start of the topics.
            # (the 7 events of this test before the kill were committed: not handled again)
            assert metric(worker, "imagegate_events_handled_total") == 1
            assert metric(worker, "imagegate_events_handled_total", type=DELETED) == 1
            assert metric(worker, "imagegate_events_handled_total", outcome="error") == 0
            assert set(kept) <= stored_names(stack)
    finally:
        stack.run("start", "worker-1")
        stack.run("start", "worker-2")


def test_whole_kafka_down_uploads_go_on_and_everything_flows_after(
    stack: Stack, tail: Tail
) -> None:
    try:
        for name in KAFKA_NODES:
            stack.run("kill", name)
        with stack.client() as c:
            account = register_and_login(c)
            names = [upload(c, account, seed) for seed in (400, 401, 402)]
        wait_for("the outbox to hold them", lambda: outbox_depth() >= 4)
        for url in [*relay_urls(), *worker_urls()]:
            wait_for(f"{url} to report events degraded", reports(url, "degraded"))
            assert health(url).status_code == 200  # degraded, not down
        with stack.client() as c:
            assert c.get("/healthz").status_code == 200  # the API is up
    finally:
        start_kafka(stack)
    wait_for("the outbox to drain", lambda: outbox_depth() == 0, timeout=180)
    # Two topics: the account's event and its images' arrive in no order between them.
    tail.read_until(
        lambda records: has(account.id, STORED, 3)(records) and has(account.id, CREATED)(records),
        timeout=180,
    )
    stored = [r for r in first_of_each(tail.of(account.id)) if r.type == STORED]
    assert [r.name for r in stored] == names
    assert [r.type for r in first_of_each(tail.of(account.id)) if r.topic == ACCOUNTS] == [CREATED]
    for url in [*relay_urls(), *worker_urls()]:
        wait_for(f"{url} to report events ok", reports(url, "ok"))
    wait_for("the worker group to catch up", lambda: group_lag() == 0, timeout=180)
