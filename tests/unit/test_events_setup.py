"""`imagegate events setup` without a cluster: what it refuses before connecting, and the ACL
list's shape (against a real cluster: tests/stack/test_kafka_setup.py)."""

from __future__ import annotations

import pytest

from imagegate import cli
from imagegate.events.setup import Options, SetupError, acls, describe_acl


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(partitions=0), "must be ≥ 1"),
        (Options(replication=2, min_insync=3), "min.insync.replicas (3) above the replication"),
    ],
)
def test_impossible_layouts_are_refused(options: Options, message: str) -> None:
    with pytest.raises(SetupError) as refused:
        options.check()
    assert message in str(refused.value)
    Options().check()  # the defaults are the local stack's, and possible


def test_the_acls_name_only_the_given_users_topics_and_group() -> None:
    made = acls("p.accounts", "p.images", relay="r", worker="w", reader="x", worker_group="g")
    assert {b.principal for b in made} == {"User:r", "User:w", "User:x"}
    assert {b.name for b in made} == {"p.accounts", "p.images", "kafka-cluster", "g"} | {
        "imagegate-replica-"
    }
    lines = sorted(describe_acl(b) for b in made)
    assert "User:x may READ group imagegate-replica- (prefix)" in lines
    assert "User:r may IDEMPOTENT_WRITE cluster kafka-cluster" in lines
    # The reader never sees the images topic; the worker never writes.
    assert not [line for line in lines if line.startswith("User:x") and "p.images" in line]
    assert not [line for line in lines if line.startswith("User:w may WRITE")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--acls", "--relay-user", "r"], "error: --acls needs --worker-user, --reader-user"),
        (["--min-insync-replicas", "4"], "error: min.insync.replicas (4) above"),
        ([], "error: SASL_PLAINTEXT needs the administrator's user and password"),
    ],
)
def test_the_command_refuses_before_connecting(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("IMAGEGATE_KAFKA_USERNAME", "IMAGEGATE_KAFKA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    if args:  # credentials present: only the flags are wrong
        monkeypatch.setenv("IMAGEGATE_KAFKA_USERNAME", "admin")
        monkeypatch.setenv("IMAGEGATE_KAFKA_PASSWORD", "x")
    # A documentation address (TEST-NET-1): had the command tried to connect, its message
    # would be "cannot reach Kafka", not the refusal asserted.
    monkeypatch.setenv("IMAGEGATE_KAFKA_BOOTSTRAP", "192.0.2.1:9")
    with pytest.raises(SystemExit) as exited:
        cli.main(["events", "setup", "--timeout", "0.1", *args])
    assert str(exited.value.code).startswith(message)
