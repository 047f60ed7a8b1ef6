"""The Kafka clients' settings as the relay and the worker build them, and the relay's refusal
of SQLite (the clients' behaviour against a real cluster: tests/stack/test_events_kafka.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from imagegate.events.kafka import consumer_config, producer_config, topics
from imagegate.events.relay import RelayUnavailable, check_relay_settings, plain_dsn
from imagegate.settings import Settings
from tests.support.cli import imagegate


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **values)


def test_producer_is_idempotent_with_acks_from_all_replicas_and_authenticates(
    tmp_path: Path,
) -> None:
    s = _settings(
        tmp_path,
        kafka_bootstrap="k1:9092,k2:9092",
        kafka_username="relay",
        kafka_password=SecretStr("pw"),
    )
    config = producer_config(s)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("relay", "pw")
    assert config["client.id"] == f"imagegate-relay@{socket.gethostname()}"
    assert 0 < config["message.timeout.ms"] <= 60_000  # a batch gets its reports, then retries


def test_consumer_commits_only_what_the_worker_handled(tmp_path: Path) -> None:
    s = _settings(tmp_path, kafka_consumer_group="g1", kafka_topic_prefix="acme")
    config = consumer_config(s)
    assert config["group.id"] == "g1"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["client.id"].startswith("imagegate-worker@")
    assert topics(s) == ("acme.accounts", "acme.images")


def test_tls_and_plaintext_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    tls = producer_config(_settings(tmp_path, kafka_security_protocol="SASL_SSL", kafka_ca_file=ca))
    assert tls["security.protocol"] == "SASL_SSL"
    assert tls["ssl.ca.location"] == str(ca)
    plain = consumer_config(_settings(tmp_path, kafka_security_protocol="PLAINTEXT"))
    assert not any(key.startswith("sasl.") for key in plain)
    assert "ssl.ca.location" not in plain


def test_relay_refuses_sqlite(tmp_path: Path) -> None:
    with pytest.raises(RelayUnavailable, match="PostgreSQL"):
        check_relay_settings(_settings(tmp_path))
    check_relay_settings(_settings(tmp_path, database_url="postgresql://u:p@db/imagegate"))
    assert plain_dsn("postgresql+asyncpg://u:p@db:5432/x") == "postgresql://u:p@db:5432/x"


def test_serve_relay_with_sqlite_exits_with_a_clear_message(tmp_path: Path) -> None:
    done = imagegate("serve", "relay", "--data-dir", str(tmp_path), "--port", "1")
    assert done.returncode != 0
    assert "the relay needs PostgreSQL" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_help_names_the_event_roles() -> None:
    done = imagegate("serve", "--help")
    assert done.returncode == 0
    assert "'relay' (publishes events to Kafka)" in " ".join(done.stdout.split())
    assert "'worker' (handles events from Kafka)" in " ".join(done.stdout.split())


def test_after_a_rebalance_a_partition_kept_is_handled_once_and_one_lost_not_at_all() -> None:
    from confluent_kafka import Message

    from imagegate.events.worker import after_rebalance

    def msg(partition: int, offset: int) -> Message:
        return Message(topic="t", partition=partition, offset=offset, value=b"{}")

    # Fetched before the revocation: p0 10-11, p1 20; given back p0 only, re-fetched from 10.
    fetched = [msg(0, 10), msg(1, 20), msg(0, 11), msg(0, 10), msg(0, 11), msg(0, 12), msg(2, 5)]
    kept = after_rebalance(fetched, revoked={("t", 0), ("t", 1)}, owned={("t", 0), ("t", 2)})
    assert [(m.partition(), m.offset()) for m in kept] == [(0, 10), (0, 11), (0, 12), (2, 5)]
