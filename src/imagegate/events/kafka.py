"""confluent-kafka client configuration from the settings, shared by the relay and the worker."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from imagegate.settings import Settings

log = logging.getLogger("imagegate.events")

# The broker's metadata answer within this or the broker counts as unreachable (/healthz).
PROBE_TIMEOUT_SECONDS = 1.5
# /healthz may be scraped often: one probe answers for this long.
PROBE_CACHE_SECONDS = 2.0
ERROR_LOG_EVERY_SECONDS = 60.0


def topics(settings: Settings) -> tuple[str, str]:
    """The topics this system publishes to: <prefix>.accounts and <prefix>.images."""
    prefix = settings.kafka_topic_prefix
    return f"{prefix}.accounts", f"{prefix}.images"


def client_id(role: str) -> str:
    """Names the process in the brokers' logs and quotas: ``imagegate-<role>@<host>``."""
    return f"imagegate-{role}@{socket.gethostname()}"


class ErrorLog:
    """librdkafka's error callback: one log line per kind of error per minute (fatal ones
    always); librdkafka itself retries."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._logged: dict[int, float] = {}

    def __call__(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("kafka (%s): fatal: %s", self.role, err.str())
            return
        now = time.monotonic()
        last = self._logged.get(err.code())
        if last is not None and now - last < ERROR_LOG_EVERY_SECONDS:
            return
        self._logged[err.code()] = now
        log.warning("kafka (%s): %s", self.role, err.str())


def common_config(settings: Settings, role: str) -> dict[str, Any]:
    """Connection and authentication settings every client of ``role`` uses."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id(role),
        "security.protocol": settings.kafka_security_protocol,
        # librdkafka logs each failed connection attempt (every 0.1-10 s per broker while a
        # cluster is away) at error level. Its errors come through error_cb instead, each kind
        # logged at most once a minute; /healthz tells whether the brokers are reachable.
        "log.connection.close": False,
        "log_level": 2,
        "logger": logging.getLogger("imagegate.kafka"),  # what is left: critical lines only
        "error_cb": ErrorLog(role),
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_username is not None:
            config["sasl.username"] = settings.kafka_username
        if settings.kafka_password is not None:
            config["sasl.password"] = settings.kafka_password.get_secret_value()
    if settings.kafka_ca_file is not None:
        config["ssl.ca.location"] = str(settings.kafka_ca_file)
    return config


def producer_config(settings: Settings, role: str = "relay") -> dict[str, Any]:
    """An idempotent producer: acks from every in-sync replica, no duplicates from retries,
    per-partition order kept (librdkafka allows 5 requests in flight with idempotence)."""
    return {
        **common_config(settings, role),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "zstd",
        # A delivery report (success or error) within this: a batch is never waited on forever
        # when the cluster is down; the relay then retries the whole batch.
        "message.timeout.ms": 30_000,
    }


def consumer_config(settings: Settings, role: str = "worker") -> dict[str, Any]:
    """A group member that commits only the offsets the worker has handled."""
    return {
        **common_config(settings, role),
        "group.id": settings.kafka_consumer_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Round-robin over the partitions of both topics: every worker gets its share of each
        # topic. The cooperative-sticky assignor balances only the count, and gave one worker
        # every partition of the busy images topic and the other the accounts topic (one
        # worker doing all the work). The price: a rebalance (a worker joining or leaving)
        # pauses every partition for a moment, not only those that move.
        "partition.assignment.strategy": "roundrobin",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
    }


def admin_config(settings: Settings, role: str) -> dict[str, Any]:
    return common_config(settings, role)


class BrokerProbe:
    """Is the cluster reachable? A metadata request with a short deadline, cached briefly."""

    def __init__(self, settings: Settings, role: str) -> None:
        self._admin = AdminClient(admin_config(settings, f"{role}-probe"))
        self._topic = topics(settings)[0]
        self._checked = -PROBE_CACHE_SECONDS
        self._ok = True  # until a probe says otherwise (only changes are logged)
        self._lock = asyncio.Lock()

    def _probe(self) -> bool:
        try:
            meta = self._admin.list_topics(topic=self._topic, timeout=PROBE_TIMEOUT_SECONDS)
        except KafkaException as exc:
            if self._ok:  # logged when the state changes, not at every probe
                log.warning("events: Kafka unreachable: %s", exc.args[0].str())
            return False
        if not self._ok:
            log.info("events: Kafka reachable (%d brokers)", len(meta.brokers))
        return bool(meta.brokers)

    async def reachable(self) -> bool:
        """True when a broker answered a metadata request within the probe timeout."""
        async with self._lock:  # concurrent scrapes share one probe
            if time.monotonic() - self._checked >= PROBE_CACHE_SECONDS:
                self._ok = await asyncio.to_thread(self._probe)
                self._checked = time.monotonic()
            return self._ok
