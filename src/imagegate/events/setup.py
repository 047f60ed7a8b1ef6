"""``imagegate events setup``: the event topics on a Kafka cluster, and the services' ACLs.

For a cluster nobody else sets up for imagegate (MSK, Confluent, a self-run Kafka): run once
with an administrator's credentials, before the relay and the worker start. Idempotent: what
exists is reported and left as it is (partitions grow only when asked), so a second run changes
nothing. The services' ACLs are defined once, by :func:`acls`: the local stack
(deploy/local/kafka.py) applies the same function's answer, so the two cannot drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

# The admin module re-exports these without marking them as exported (mypy --strict).
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from imagegate.events.feed import GROUP_PREFIX
from imagegate.events.kafka import admin_config, topics
from imagegate.settings import Settings

# The local stack's layout (deploy/local/kafka.py uses these): a write is acknowledged by two
# brokers, and the cluster keeps accepting writes with one of three down.
DEFAULT_PARTITIONS = 6
DEFAULT_REPLICATION = 3
DEFAULT_MIN_INSYNC = 2
CONNECT_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0
# Kafka's name for the one cluster resource (IdempotentWrite is granted on it).
CLUSTER_NAME = "kafka-cluster"

T = TypeVar("T")


class SetupError(Exception):
    """Setup cannot go on; the message is one line for the operator."""


def _acl(user: str, kind: ResourceType, name: str, op: AclOperation, prefixed: bool = False) -> Any:
    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    return AclBinding(kind, name, pattern, f"User:{user}", "*", op, AclPermissionType.ALLOW)


def acls(
    accounts: str, images: str, *, relay: str, worker: str, reader: str, worker_group: str
) -> tuple[AclBinding, ...]:
    """What each service's Kafka user may do, and nothing else (no ACL = denied).

    The relay writes both topics (idempotent producer); the worker reads them in its consumer
    group; the reader (security and uploader's account feed) reads the accounts topic in
    groups named ``imagegate-replica-*``.
    """
    topic, group, cluster = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.BROKER
    both = (accounts, images)
    return (
        *(
            _acl(relay, topic, t, op)
            for t in both
            for op in (AclOperation.WRITE, AclOperation.DESCRIBE)
        ),
        _acl(relay, cluster, CLUSTER_NAME, AclOperation.IDEMPOTENT_WRITE),
        *(
            _acl(worker, topic, t, op)
            for t in both
            for op in (AclOperation.READ, AclOperation.DESCRIBE)
        ),
        _acl(worker, group, worker_group, AclOperation.READ),
        _acl(reader, topic, accounts, AclOperation.READ),
        _acl(reader, topic, accounts, AclOperation.DESCRIBE),
        _acl(reader, group, GROUP_PREFIX, AclOperation.READ, prefixed=True),
    )


def describe_acl(binding: AclBinding) -> str:
    """``User:relay may WRITE topic imagegate.images`` (``prefix`` for a prefixed pattern)."""
    restype = _name(binding.restype)
    kind = {"BROKER": "cluster"}.get(restype, restype.lower())
    prefixed = binding.resource_pattern_type == ResourcePatternType.PREFIXED
    target = f"{kind} {binding.name}" + (" (prefix)" if prefixed else "")
    return f"{binding.principal} may {_name(binding.operation)} {target}"


def _name(value: object) -> str:
    return value.name if isinstance(value, Enum) else str(value)


@dataclass(frozen=True)
class Options:
    partitions: int = DEFAULT_PARTITIONS
    replication: int = DEFAULT_REPLICATION
    min_insync: int = DEFAULT_MIN_INSYNC
    grow_partitions: bool = False
    # None: topics only. Otherwise (relay, worker, reader) Kafka user names.
    principals: tuple[str, str, str] | None = None
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS

    def check(self) -> None:
        if self.partitions < 1 or self.replication < 1 or self.min_insync < 1:
            raise SetupError("partitions, replication factor and min.insync.replicas must be ≥ 1")
        if self.min_insync > self.replication:
            raise SetupError(
                f"min.insync.replicas ({self.min_insync}) above the replication factor "
                f"({self.replication}): no write could ever be acknowledged"
            )


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    replication: int
    min_insync: str  # as the broker reports it

    def __str__(self) -> str:
        return (
            f"{self.partitions} partitions, replication factor {self.replication}, "
            f"min.insync.replicas={self.min_insync}"
        )


class _Admin:
    """An AdminClient whose failures become one-line SetupErrors naming the user."""

    def __init__(self, settings: Settings) -> None:
        self.user = settings.kafka_username or "(none)"
        self.bootstrap = settings.kafka_bootstrap
        self.errors: list[KafkaError] = []
        # Connection errors are collected here and told once, in the final message, rather
        # than logged by librdkafka at every retry.
        config = admin_config(settings, "setup") | {"error_cb": self.errors.append}
        try:
            self.client = AdminClient(config)
        except KafkaException as exc:
            raise SetupError(f"invalid Kafka settings: {_text(exc)}") from None

    def connect(self, timeout: float) -> None:
        """Wait until a broker answers a metadata request (refused credentials end it at once)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.list_topics(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                return
            except KafkaException as exc:
                last = exc.args[0]
            self.client.poll(0)  # serves error_cb: what the brokers said
            for err in self.errors:
                if err.code() == KafkaError._AUTHENTICATION:
                    raise SetupError(
                        f"Kafka at {self.bootstrap} refused the credentials of user "
                        f"{self.user!r}: {_text(err)}"
                    )
            if time.monotonic() >= deadline:
                detail = _text(self.errors[-1] if self.errors else last)
                raise SetupError(
                    f"cannot reach Kafka at {self.bootstrap} within {timeout:g} s: {detail}"
                )

    def wait_for_brokers(self, count: int, timeout: float) -> None:
        """Wait until ``count`` brokers are registered: a cluster that is starting (Docker
        Compose, a new StatefulSet) lists its brokers one by one, and a topic with more replicas
        than listed brokers is refused."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = len(self.client.list_topics(timeout=REQUEST_TIMEOUT_SECONDS).brokers)
            except KafkaException as exc:
                raise self.failure(exc.args[0], "listing brokers") from None
            if found >= count:
                return
            if time.monotonic() >= deadline:
                raise SetupError(
                    f"the cluster lists {found} brokers after {timeout:g} s: a replication "
                    f"factor of {count} needs {count} (--replication-factor)"
                )
            time.sleep(0.5)

    def result(self, future: Future[T], what: str) -> T:
        try:
            return future.result()
        except KafkaException as exc:
            raise self.failure(exc.args[0], what) from None

    def failure(self, err: KafkaError, what: str) -> SetupError:
        code = err.code()
        if code in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        ):
            return SetupError(
                f"{what}: Kafka user {self.user!r} is not allowed to ({err.name()}); "
                "run it with an administrator's credentials"
            )
        if code == KafkaError.SECURITY_DISABLED:
            return SetupError(
                f"{what}: the cluster has no authorizer (ACLs are disabled); run without --acls"
            )
        return SetupError(f"{what}: {_text(err)}")

    def topic_states(self, names: Iterable[str]) -> dict[str, TopicState]:
        """The named topics that exist, as the brokers describe them."""
        try:
            md = self.client.list_topics(timeout=REQUEST_TIMEOUT_SECONDS)
        except KafkaException as exc:
            raise self.failure(exc.args[0], "listing topics") from None
        found = {n: md.topics[n] for n in names if n in md.topics and md.topics[n].error is None}
        if not found:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in found]
        futures = self.client.describe_configs(resources, request_timeout=REQUEST_TIMEOUT_SECONDS)
        states = {}
        for resource, future in futures.items():
            try:
                config = future.result()
            except KafkaException as exc:
                # Listed by one broker, not yet known to the one asked (just created): not
                # there yet, for the caller (who waits for it, or creates it and is told so).
                if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise self.failure(
                    exc.args[0], f"reading the configuration of topic {resource.name}"
                ) from None
            meta = found[resource.name]
            replication = max((len(p.replicas) for p in meta.partitions.values()), default=0)
            min_insync = config["min.insync.replicas"].value
            states[resource.name] = TopicState(
                resource.name, len(meta.partitions), replication, str(min_insync)
            )
        return states


def _text(err: KafkaError | KafkaException) -> str:
    """A Kafka error's text on one line."""
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    text = err.str() if isinstance(err, KafkaError) else str(err)
    return " ".join(text.split())


def ensure_topics(
    admin: _Admin, names: Sequence[str], options: Options, say: Callable[[str], None]
) -> None:
    """Create the missing topics; report the existing ones (grow their partitions if asked)."""
    before = admin.topic_states(names)
    missing = [n for n in names if n not in before]
    created: set[str] = set()
    if missing:
        admin.wait_for_brokers(options.replication, options.connect_timeout)
        config = {
            "min.insync.replicas": str(options.min_insync),
            # Never elect a replica that missed writes: lose availability, not events.
            "unclean.leader.election.enable": "false",
        }
        wanted = [
            NewTopic(n, options.partitions, options.replication, config=config) for n in missing
        ]
        futures = admin.client.create_topics(wanted, request_timeout=REQUEST_TIMEOUT_SECONDS)
        for name, future in futures.items():
            try:
                future.result()
                created.add(name)
            except KafkaException as exc:
                # Created meanwhile by someone else (another run): reported as existing below.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise admin.failure(exc.args[0], f"creating topic {name}") from None
    states = _wait_for(admin, names)
    for name in names:
        state = states[name]
        if name in created:
            say(f"topic {name}: created: {state}")
            continue
        notes = []
        lead = "exists, left as it is"
        if state.partitions < options.partitions and options.grow_partitions:
            future = admin.client.create_partitions(
                [NewPartitions(name, options.partitions)], request_timeout=REQUEST_TIMEOUT_SECONDS
            )[name]
            admin.result(future, f"adding partitions to topic {name}")
            lead = f"exists, partitions increased from {state.partitions}"
            # New partitions take part of the keys: an account's later events go to another
            # partition than its earlier ones (order holds again once the old ones are read).
            state = _wait_for(admin, [name], partitions=options.partitions)[name]
        elif state.partitions < options.partitions:
            notes.append(f"asked {options.partitions} partitions: --grow-partitions adds them")
        elif state.partitions > options.partitions:
            notes.append(f"asked {options.partitions} partitions: Kafka never removes any")
        if state.replication != options.replication:
            notes.append(
                f"asked replication factor {options.replication}: changing it takes a "
                "partition reassignment (kafka-reassign-partitions)"
            )
        if state.min_insync != str(options.min_insync):
            notes.append(
                f"asked min.insync.replicas={options.min_insync}: change it with kafka-configs"
            )
        say(f"topic {name}: {lead}: {state}" + "".join(f"; {n}" for n in notes))


def _wait_for(admin: _Admin, names: Sequence[str], partitions: int = 0) -> dict[str, TopicState]:
    """The topics' states once every broker's metadata shows them (creation is asynchronous)."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS
    while True:
        states = admin.topic_states(names)
        if all(n in states and states[n].partitions >= partitions for n in names):
            return states
        if time.monotonic() >= deadline:
            missing = [n for n in names if n not in states]
            raise SetupError(f"topics not visible {REQUEST_TIMEOUT_SECONDS:g} s after: {missing}")
        time.sleep(0.2)


def ensure_acls(admin: _Admin, wanted: Sequence[AclBinding], say: Callable[[str], None]) -> None:
    """Create the wanted ACLs that are missing. Other ACLs (also of these users) stay."""
    principals = sorted({b.principal for b in wanted})
    present: set[AclBinding] = set()
    for principal in principals:
        # None matches any name and any host (the stubs say str; librdkafka takes NULL).
        everything_of = AclBindingFilter(
            ResourceType.ANY,
            None,  # type: ignore[arg-type]
            ResourcePatternType.ANY,
            principal,
            None,  # type: ignore[arg-type]
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        future = admin.client.describe_acls(everything_of, request_timeout=REQUEST_TIMEOUT_SECONDS)
        present |= set(admin.result(future, f"reading the ACLs of {principal}"))
    missing = [b for b in wanted if b not in present]
    if missing:
        futures = admin.client.create_acls(missing, request_timeout=REQUEST_TIMEOUT_SECONDS)
        for binding, future in futures.items():
            admin.result(future, f"creating the ACL '{describe_acl(binding)}'")
            say(f"ACL created: {describe_acl(binding)}")
    others = len(present - set(wanted))
    say(
        f"ACLs of {', '.join(principals)}: {len(missing)} created, "
        f"{len(wanted) - len(missing)} already there"
        + (f", {others} others left as they are" if others else "")
    )


def setup(settings: Settings, options: Options, say: Callable[[str], None] = print) -> None:
    """Make the topics (and with ``options.principals`` the ACLs) exist, reporting each step."""
    options.check()
    sasl = settings.kafka_security_protocol.startswith("SASL")
    if sasl and (settings.kafka_username is None or settings.kafka_password is None):
        raise SetupError(
            f"{settings.kafka_security_protocol} needs the administrator's user and password "
            "(--username and --password-file, or IMAGEGATE_KAFKA_USERNAME and _PASSWORD)"
        )
    admin = _Admin(settings)
    admin.connect(options.connect_timeout)
    accounts, images = topics(settings)
    ensure_topics(admin, (accounts, images), options, say)
    if options.principals is not None:
        relay, worker, reader = options.principals
        wanted = acls(
            accounts,
            images,
            relay=relay,
            worker=worker,
            reader=reader,
            worker_group=settings.kafka_consumer_group,
        )
        ensure_acls(admin, wanted, say)
