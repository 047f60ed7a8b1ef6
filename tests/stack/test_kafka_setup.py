"""`imagegate events setup` against the stack's real Kafka cluster (three nodes, SCRAM, ACLs).

Every test works on topics of its own prefix and on Kafka users of its own names, so the
stack's topics and ACLs are never touched; what the tests make is removed at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)

from tests.stack.conftest import KafkaAccess

WORKER_GROUP = "setup-test-worker"


@dataclass(frozen=True)
class Run:
    prefix: str
    relay: str
    worker: str
    reader: str

    @property
    def topics(self) -> tuple[str, str]:
        return f"{self.prefix}.accounts", f"{self.prefix}.images"

    @property
    def principals(self) -> list[str]:
        return [f"User:{u}" for u in (self.relay, self.worker, self.reader)]


def _new_run() -> Run:
    tag = uuid.uuid4().hex[:8]
    return Run(f"setup-test-{tag}", f"relay-{tag}", f"worker-{tag}", f"reader-{tag}")


def setup_cli(
    kafka: KafkaAccess,
    run: Run,
    *args: str,
    user: str = "admin",
    password: str | None = None,
    bootstrap: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`imagegate events setup ARGS` with the settings a deployment gives it (environment)."""
    config = kafka.config(user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env |= {
        "IMAGEGATE_KAFKA_BOOTSTRAP": bootstrap or kafka.bootstrap,
        "IMAGEGATE_KAFKA_SECURITY_PROTOCOL": config["security.protocol"],
        "IMAGEGATE_KAFKA_SASL_MECHANISM": config["sasl.mechanism"],
        "IMAGEGATE_KAFKA_USERNAME": user,
        "IMAGEGATE_KAFKA_PASSWORD": config["sasl.password"] if password is None else password,
        "IMAGEGATE_KAFKA_TOPIC_PREFIX": run.prefix,
        "IMAGEGATE_KAFKA_CONSUMER_GROUP": WORKER_GROUP,
    }
    cmd = [sys.executable, "-m", "imagegate", "events", "setup", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)


def acl_args(run: Run) -> list[str]:
    users = {"--relay-user": run.relay, "--worker-user": run.worker, "--reader-user": run.reader}
    return ["--acls", *(arg for pair in users.items() for arg in pair)]


def expected_acls(run: Run) -> set[tuple[str, str, str, str, str]]:
    """The local stack's ACLs (deploy/local/kafka.py, README "the local stack"), for this run's
    users and topics: (principal, resource type, name, pattern, operation), all ALLOW from *."""
    accounts, images = run.topics
    relay, worker, reader = run.principals
    return {
        (relay, "TOPIC", accounts, "LITERAL", "WRITE"),
        (relay, "TOPIC", accounts, "LITERAL", "DESCRIBE"),
        (relay, "TOPIC", images, "LITERAL", "WRITE"),
        (relay, "TOPIC", images, "LITERAL", "DESCRIBE"),
        (relay, "BROKER", "kafka-cluster", "LITERAL", "IDEMPOTENT_WRITE"),
        (worker, "TOPIC", accounts, "LITERAL", "READ"),
        (worker, "TOPIC", accounts, "LITERAL", "DESCRIBE"),
        (worker, "TOPIC", images, "LITERAL", "READ"),
        (worker, "TOPIC", images, "LITERAL", "DESCRIBE"),
        (worker, "GROUP", WORKER_GROUP, "LITERAL", "READ"),
        (reader, "TOPIC", accounts, "LITERAL", "READ"),
        (reader, "TOPIC", accounts, "LITERAL", "DESCRIBE"),
        (reader, "GROUP", "imagegate-replica-", "PREFIXED", "READ"),
    }


def _filter(principal: str | None) -> Any:
    return AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        principal,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def described_acls(admin: AdminClient, run: Run) -> set[tuple[str, str, str, str, str]]:
    """Every ACL the cluster holds for this run's users, as the brokers describe them."""
    found: set[tuple[str, str, str, str, str]] = set()
    for principal in run.principals:
        bindings: list[AclBinding] = admin.describe_acls(
            _filter(principal), request_timeout=30
        ).result()
        for b in bindings:
            assert b.permission_type == AclPermissionType.ALLOW and b.host == "*", b
            found.add(
                (
                    b.principal,
                    b.restype.name,
                    b.name,
                    b.resource_pattern_type.name,
                    b.operation.name,
                )
            )
    return found


@dataclass(frozen=True)
class TopicFacts:
    partitions: int
    replicas: tuple[frozenset[int], ...]  # each partition's replica set
    config: dict[str, str]


def topic_facts(admin: AdminClient, topic: str) -> TopicFacts | None:
    md = admin.list_topics(timeout=30)
    if topic not in md.topics or md.topics[topic].error is not None:
        return None
    parts = md.topics[topic].partitions
    (future,) = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, topic)], request_timeout=30
    ).values()
    config = {k: str(v.value) for k, v in future.result().items()}
    return TopicFacts(
        len(parts), tuple(frozenset(parts[p].replicas) for p in sorted(parts)), config
    )


def cleanup(admin: AdminClient, run: Run) -> None:
    """Remove this run's topics and every ACL of its users (the stack's own stay)."""
    for future in admin.delete_acls(
        [_filter(p) for p in run.principals], request_timeout=30
    ).values():
        future.result()
    existing = [t for t in run.topics if topic_facts(admin, t) is not None]
    if existing:
        for future in admin.delete_topics(existing, operation_timeout=30).values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise


@pytest.fixture(scope="module")
def admin(kafka: KafkaAccess) -> AdminClient:
    client: AdminClient = kafka.cluster.admin()
    return client


@pytest.fixture(scope="module")
def made(kafka: KafkaAccess, admin: AdminClient) -> Iterator[tuple[Run, str]]:
    """One run of the command: 4 partitions (not the default 6), 3 replicas, 2 in sync, ACLs."""
    run = _new_run()
    try:
        proc = setup_cli(
            kafka, run, "--partitions", "4", "--replication-factor", "3",
            "--min-insync-replicas", "2", *acl_args(run),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        yield run, proc.stdout
    finally:
        cleanup(admin, run)


def test_it_creates_the_topics_as_asked(made: tuple[Run, str], admin: AdminClient) -> None:
    run, out = made
    for topic in run.topics:
        assert f"topic {topic}: created: 4 partitions, replication factor 3" in out, out
        facts = topic_facts(admin, topic)
        assert facts is not None, topic
        assert facts.partitions == 4
        # Three copies of every partition, on the three different nodes.
        assert all(replicas == {1, 2, 3} for replicas in facts.replicas), facts.replicas
        assert facts.config["min.insync.replicas"] == "2"
        assert facts.config["unclean.leader.election.enable"] == "false"


def test_its_acls_are_the_local_stacks_set(made: tuple[Run, str], admin: AdminClient) -> None:
    run, out = made
    assert described_acls(admin, run) == expected_acls(run)
    assert out.count("ACL created: ") == len(expected_acls(run))
    assert "13 created, 0 already there" in out


def test_the_acls_are_one_definition_with_the_local_stack(kafka: KafkaAccess) -> None:
    """deploy/local/kafka.py's ACLS are the product's function's answer for its names."""
    stack_run = Run("imagegate", "relay", "worker", "reader")
    local = {
        (b.principal, b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name)
        for b in kafka.module.ACLS
    }
    expected = expected_acls(stack_run)
    # The stack's worker group is imagegate-worker (this file's runs use their own group).
    expected = {
        (p, t, "imagegate-worker" if n == WORKER_GROUP else n, pat, op)
        for p, t, n, pat, op in expected
    }
    assert local == expected


def test_a_second_run_changes_nothing(
    made: tuple[Run, str], kafka: KafkaAccess, admin: AdminClient
) -> None:
    run, _ = made
    before = {t: topic_facts(admin, t) for t in run.topics}
    acls_before = described_acls(admin, run)
    proc = setup_cli(kafka, run, "--partitions", "4", *acl_args(run))
    assert proc.returncode == 0, proc.stderr
    for topic in run.topics:
        line = f"topic {topic}: exists, left as it is: 4 partitions, replication factor 3, "
        assert line + "min.insync.replicas=2\n" in proc.stdout, proc.stdout
    assert "ACL created" not in proc.stdout
    assert "0 created, 13 already there" in proc.stdout
    assert {t: topic_facts(admin, t) for t in run.topics} == before
    assert described_acls(admin, run) == acls_before


def test_partitions_grow_only_when_asked(kafka: KafkaAccess, admin: AdminClient) -> None:
    run = _new_run()
    try:
        first = setup_cli(kafka, run, "--partitions", "2", "--replication-factor", "2")
        assert first.returncode == 0, first.stderr
        asked = setup_cli(kafka, run, "--partitions", "3", "--replication-factor", "2")
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.count("asked 3 partitions: --grow-partitions adds them") == 2
        assert all((f := topic_facts(admin, t)) and f.partitions == 2 for t in run.topics)
        grown = setup_cli(
            kafka, run, "--partitions", "3", "--replication-factor", "2", "--grow-partitions"
        )
        assert grown.returncode == 0, grown.stderr
        assert grown.stdout.count("exists, partitions increased from 2: 3 partitions") == 2
        for topic in run.topics:
            facts = topic_facts(admin, topic)
            assert facts is not None and facts.partitions == 3
            assert all(len(r) == 2 for r in facts.replicas)
        # Fewer than there are is never a change.
        fewer = setup_cli(kafka, run, "--partitions", "1", "--replication-factor", "2")
        assert fewer.returncode == 0, fewer.stderr
        assert fewer.stdout.count("asked 1 partitions: Kafka never removes any") == 2
    finally:
        cleanup(admin, run)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_a_wrong_password_fails_with_one_line(kafka: KafkaAccess, admin: AdminClient) -> None:
    run = _new_run()
    proc = setup_cli(kafka, run, *acl_args(run), password="not-the-admin-password")
    line = _one_line_error(proc)
    assert "refused the credentials of user 'admin'" in line, line
    assert "not-the-admin-password" not in proc.stderr + proc.stdout
    assert all(topic_facts(admin, t) is None for t in run.topics)


def test_a_user_without_the_rights_fails_with_one_line(
    kafka: KafkaAccess, admin: AdminClient
) -> None:
    """The stack's relay may write the event topics, nothing else: no topic, no ACL made."""
    run = _new_run()
    try:
        proc = setup_cli(kafka, run, *acl_args(run), user="relay")
        line = _one_line_error(proc)
        assert f"creating topic {run.prefix}." in line, line
        assert "Kafka user 'relay' is not allowed to" in line, line
        assert all(topic_facts(admin, t) is None for t in run.topics)
        assert described_acls(admin, run) == set()
    finally:
        cleanup(admin, run)


def test_an_unreachable_cluster_fails_with_one_line(kafka: KafkaAccess) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = setup_cli(kafka, _new_run(), "--timeout", "3", bootstrap=f"127.0.0.1:{port}")
    line = _one_line_error(proc)
    assert f"cannot reach Kafka at 127.0.0.1:{port} within 3 s" in line, line


def test_more_replicas_than_brokers_fails_with_one_line(
    kafka: KafkaAccess, admin: AdminClient
) -> None:
    run = _new_run()
    proc = setup_cli(kafka, run, "--replication-factor", "4", "--timeout", "2")
    line = _one_line_error(proc)
    assert "the cluster lists 3 brokers after 2 s: a replication factor of 4 needs 4" in line
    assert all(topic_facts(admin, t) is None for t in run.topics)
