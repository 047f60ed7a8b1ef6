"""The stack's Kafka cluster: replication, authentication, ACLs, and a node dying under writes."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from imagegate.events.envelope import Event
from imagegate.events.feed import is_heartbeat
from tests.stack.conftest import KafkaAccess, Stack

ACCOUNTS, IMAGES = "imagegate.accounts", "imagegate.images"


def _quiet(errors: list[KafkaError] | None = None) -> dict[str, Any]:
    """Collect the client's errors instead of printing them (refused connections are expected)."""
    sink = errors if errors is not None else []
    return {"error_cb": sink.append, "log_level": 0}


def _ping(owner: str) -> bytes:
    """A valid envelope of a type no handler knows: a worker that sees it changes nothing."""
    event = Event.new(
        "imagegate.stack-test.ping",
        source="/imagegate/tests",
        subject=f"ping/{uuid.uuid4()}",
        owner_id=owner,
        data={},
    )
    return event.to_json()


def _produce(config: dict[str, Any], topic: str, count: int) -> list[tuple[Message, Any]]:
    """``count`` events keyed by one owner; every delivery report (message, error)."""
    reports: list[tuple[Message, Any]] = []
    producer = Producer(config)
    owner = str(uuid.uuid4())
    for _ in range(count):
        producer.produce(
            topic,
            _ping(owner),
            key=owner,
            on_delivery=lambda err, msg: reports.append((msg, err)),
        )
        producer.poll(0)
    remaining = producer.flush(120)
    assert remaining == 0, f"{remaining} messages neither delivered nor failed"
    return reports


def _read_back(config: dict[str, Any], delivered: Iterable[Message]) -> Counter[bytes]:
    """Read the delivered messages again by partition and offset (no group is joined)."""
    wanted = Counter(m.value() for m in delivered)
    first: dict[tuple[str, int], int] = {}
    last: dict[tuple[str, int], int] = {}
    for m in delivered:
        key = (m.topic(), m.partition())
        first[key] = min(first.get(key, m.offset()), m.offset())
        last[key] = max(last.get(key, m.offset()), m.offset())
    consumer = Consumer({**config, "enable.auto.commit": False, **_quiet()})
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in first.items()])
    seen: Counter[bytes] = Counter()
    deadline = time.monotonic() + 60
    try:
        while any(last[k] >= first[k] for k in first) and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key = (msg.topic(), msg.partition())
            if key in last and msg.offset() <= last[key]:
                if not is_heartbeat(msg.headers()):  # the live relay's, interleaved
                    seen[msg.value()] += 1
                first[key] = msg.offset() + 1
    finally:
        consumer.close()
    assert set(seen) == set(wanted), "some delivered messages were not read back"
    return seen


def _errors_until(consumer: Consumer, codes: set[int], timeout: float = 30) -> set[int]:
    """Poll until one of ``codes`` is reported (or the deadline); every error code seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not seen & codes and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is not None:
            seen.add(msg.error().code())
            assert msg.error().code() != KafkaError.NO_ERROR
        elif msg is not None:
            pytest.fail(f"read a message from {msg.topic()} it must not read")
    return seen


def _wait_in_sync(admin: AdminClient, timeout: float = 180) -> None:
    """Every node is a live broker and in every partition's in-sync replicas."""
    deadline = time.monotonic() + timeout
    lagging: list[str] = ["metadata"]
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=10)
        except KafkaException:
            time.sleep(0.5)
            continue
        lagging = [
            f"{t}/{p}: isr {sorted(pm.isrs)}"
            for t in (ACCOUNTS, IMAGES)
            for p, pm in md.topics[t].partitions.items()
            if sorted(pm.isrs) != [1, 2, 3]
        ]
        if sorted(md.brokers) == [1, 2, 3] and not lagging:
            return
        time.sleep(0.5)
    raise AssertionError(f"the cluster did not get back in sync: {lagging[:6]}")


def test_topics_are_replicated_on_three_nodes_and_need_two_in_sync(kafka: KafkaAccess) -> None:
    admin = kafka.cluster.admin()
    md = admin.list_topics(timeout=30)
    assert sorted(md.brokers) == [1, 2, 3]
    for topic in (ACCOUNTS, IMAGES):
        partitions = md.topics[topic].partitions
        assert len(partitions) == 6
        for p in partitions.values():
            assert sorted(p.replicas) == [1, 2, 3], (topic, p.id, p.replicas)
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in (ACCOUNTS, IMAGES)]
    for resource, future in admin.describe_configs(resources, request_timeout=30).items():
        config = future.result()
        assert config["min.insync.replicas"].value == "2", resource
        assert config["unclean.leader.election.enable"].value == "false", resource


def test_relay_writes_worker_and_reader_read_what_they_may(kafka: KafkaAccess) -> None:
    relay = kafka.config("relay", **{"enable.idempotence": True, "acks": "all"}, **_quiet())
    reports = _produce(relay, IMAGES, 20) + _produce(relay, ACCOUNTS, 20)
    assert [err for _, err in reports if err is not None] == []
    delivered = [m for m, _ in reports]
    seen = _read_back(kafka.config("worker", **{"group.id": "imagegate-worker"}), delivered)
    assert sum(seen.values()) == 40
    # The reader (the replicas' account feed) reads the accounts topic in its own groups.
    reader = kafka.config("reader", **{"group.id": f"imagegate-replica-{uuid.uuid4().hex[:8]}"})
    accounts = [m for m in delivered if m.topic() == ACCOUNTS]
    assert sum(_read_back(reader, accounts).values()) == 20


def test_worker_cannot_produce(kafka: KafkaAccess) -> None:
    worker = kafka.config("worker", **{"message.timeout.ms": 20000}, **_quiet())
    for topic in (IMAGES, ACCOUNTS):
        reports = _produce(worker, topic, 3)
        codes = {err.code() if err is not None else None for _, err in reports}
        assert codes == {KafkaError.TOPIC_AUTHORIZATION_FAILED}, (topic, codes)


def test_relay_cannot_read_and_worker_only_in_its_group(kafka: KafkaAccess) -> None:
    # No group at all (assign): only the topic's ACL decides.
    relay = Consumer(kafka.config("relay", **{"group.id": "unused"}, **_quiet()))
    relay.assign([TopicPartition(IMAGES, p, OFFSET_BEGINNING) for p in range(6)])
    try:
        seen = _errors_until(relay, {KafkaError.TOPIC_AUTHORIZATION_FAILED})
        assert KafkaError.TOPIC_AUTHORIZATION_FAILED in seen, seen
    finally:
        relay.close()
    worker = Consumer(kafka.config("worker", **{"group.id": "not-the-worker-group"}, **_quiet()))
    worker.subscribe([IMAGES])
    try:
        seen = _errors_until(worker, {KafkaError.GROUP_AUTHORIZATION_FAILED})
        assert KafkaError.GROUP_AUTHORIZATION_FAILED in seen, seen
    finally:
        worker.close()


def test_reader_cannot_read_images(kafka: KafkaAccess) -> None:
    group = f"imagegate-replica-{uuid.uuid4().hex[:8]}"
    reader = Consumer(kafka.config("reader", **{"group.id": group}, **_quiet()))
    reader.subscribe([IMAGES])
    try:
        seen = _errors_until(reader, {KafkaError.TOPIC_AUTHORIZATION_FAILED})
        assert KafkaError.TOPIC_AUTHORIZATION_FAILED in seen, seen
    finally:
        reader.close()


@pytest.mark.parametrize(
    "change",
    [
        {"sasl.password": "not-the-password"},
        {"sasl.username": "nobody"},
        {"security.protocol": "PLAINTEXT"},  # no SASL at all: anonymous
        {"sasl.mechanism": "PLAIN"},  # the internal listeners' mechanism is not offered here
    ],
    ids=["wrong-password", "unknown-user", "no-sasl", "plain-mechanism"],
)
def test_a_client_without_valid_credentials_cannot_list_topics(
    kafka: KafkaAccess, change: dict[str, str]
) -> None:
    # The same settings with the admin's real credentials work: only the change is refused.
    assert ACCOUNTS in kafka.cluster.admin().list_topics(timeout=30).topics
    errors: list[KafkaError] = []
    config = {**kafka.config("admin"), **change, **_quiet(errors)}
    if config["security.protocol"] == "PLAINTEXT":
        config = {k: v for k, v in config.items() if not k.startswith("sasl.")}
    client = AdminClient(config)
    with pytest.raises(KafkaException):
        client.list_topics(timeout=8)
    if config["security.protocol"] != "PLAINTEXT":
        client.poll(1)  # serves the error callbacks: the brokers refused the SASL exchange
        assert KafkaError._AUTHENTICATION in {e.code() for e in errors}, errors


def test_acks_all_writes_survive_a_killed_node_which_rejoins(
    stack: Stack, kafka: KafkaAccess
) -> None:
    admin = kafka.cluster.admin()
    _wait_in_sync(admin)
    relay = kafka.config(
        "relay",
        **{"enable.idempotence": True, "acks": "all", "message.timeout.ms": 90000},
        **_quiet(),
    )
    stack.run("kill", "kafka-2")
    try:
        # A third of the partitions had their leader on the dead node: the writes wait for the
        # controller to move leadership, then land on the two nodes left (min.insync.replicas).
        reports = _produce(relay, IMAGES, 300)
        assert [err for _, err in reports if err is not None] == []
        node2 = next(n for n in kafka.module.NODES if n.id == 2)
        assert not kafka.cluster.serving(node2)
        seen = _read_back(
            kafka.config("worker", **{"group.id": "imagegate-worker"}), [m for m, _ in reports]
        )
        # Idempotence: retries during the failover wrote nothing twice.
        assert sum(seen.values()) == 300 and set(seen.values()) == {1}
    finally:
        stack.run("start", "kafka-2")
    _wait_in_sync(admin)
