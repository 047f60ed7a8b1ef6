"""The local stack's Kafka: a 3-node KRaft cluster on loopback, each node broker + controller.

Used by deploy/local/stack.py (which owns the processes); this module knows the jars, the node
configuration, the users, topics and ACLs, and how to ask a node whether it is serving.

- Jars: deploy/kafka/pom.xml resolved by Maven once, cached in
  ~/.cache/imagegate/kafka-<version>-<pom hash>/.
- Users (SASL/SCRAM-SHA-512 on the client listener, created when a node's storage is
  formatted, so they exist before the first start): admin (super user), relay, worker, reader.
  The nodes talk to each other (replication, the KRaft quorum) as `node` over SASL/PLAIN.
- Topics and ACLs are applied by `stack up` with the admin user: the topics declared here, the
  ACLs of src/imagegate/events/setup.py's `acls()` (the one definition, which
  `imagegate events setup --acls` makes on any cluster). ACLs that are not declared are
  removed, so the cluster grants exactly those.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from imagegate.events import setup as event_setup
from imagegate.events.feed import GROUP_PREFIX

ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = ROOT / "deploy" / "kafka"
POM = KAFKA_DIR / "pom.xml"
_version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
assert _version, "deploy/kafka/pom.xml names no kafka.version"
VERSION = _version.group(1)

HOST = "127.0.0.1"
USERS = ("admin", "relay", "worker", "reader")
TOPICS = ("imagegate.accounts", "imagegate.images")
# Kafka's own producer benchmark writes here (same layout as the real topics; admin only),
# never into the topics the worker consumes.
BENCH_TOPIC = "imagegate-bench"
PARTITIONS = event_setup.DEFAULT_PARTITIONS
REPLICATION = event_setup.DEFAULT_REPLICATION
MIN_INSYNC = event_setup.DEFAULT_MIN_INSYNC
WORKER_GROUP = "imagegate-worker"
REPLICA_GROUP_PREFIX = GROUP_PREFIX
HEAP = os.environ.get("IMAGEGATE_STACK_KAFKA_HEAP", "384m")


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"IMAGEGATE_STACK_{name}_PORT", default))


@dataclass(frozen=True)
class Node:
    id: int
    client_port: int  # SASL/SCRAM, for services and tools
    broker_port: int  # inter-broker replication, SASL/PLAIN
    controller_port: int  # KRaft quorum, SASL/PLAIN

    @property
    def name(self) -> str:
        return f"kafka-{self.id}"


NODES = tuple(
    Node(
        i,
        _port(f"KAFKA{i}", 9191 + i),
        _port(f"KAFKA{i}_BROKER", 9391 + i),
        _port(f"KAFKA{i}_CONTROLLER", 9291 + i),
    )
    for i in (1, 2, 3)
)
BOOTSTRAP = ",".join(f"{HOST}:{n.client_port}" for n in NODES)


ACCOUNTS, IMAGES = TOPICS
# What each service may do, and nothing else (no ACL = denied; admin is a super user). Defined
# once, in the product (`imagegate events setup --acls` makes the same ones on any cluster).
ACLS = event_setup.acls(
    ACCOUNTS, IMAGES, relay="relay", worker="worker", reader="reader", worker_group=WORKER_GROUP
)


def new_secrets() -> dict[str, str]:
    """The cluster id and every password, generated once into the stack's secrets.env."""
    # Kafka's own Uuid.randomUuid(): URL-safe base64 of 16 random bytes, never starting with
    # '-' (it would read as an option on a command line).
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22])[0] == "-":
        pass
    values = {"KAFKA_CLUSTER_ID": cluster_id, "KAFKA_NODE_PASSWORD": secrets.token_hex(24)}
    values |= {f"KAFKA_{u.upper()}_PASSWORD": secrets.token_hex(24) for u in USERS}
    return values


def log(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


class Cluster:
    """The cluster under one state dir; ``secrets`` returns the stack's secrets.env values."""

    def __init__(self, state: Path, cache: Path, secrets: Callable[[], Mapping[str, str]]):
        self.state = state
        # Keyed by the version and the pom: a changed dependency list fetches afresh.
        pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()[:8]
        self.jar_dir = cache / f"kafka-{VERSION}-{pom_hash}"
        self.secrets = secrets

    # --- the jars ------------------------------------------------------------------------

    def jars_cached(self) -> bool:
        return (self.jar_dir / f"kafka-clients-{VERSION}.jar").exists()

    def ensure_jars(self) -> Path:
        """The broker's and tools' jars, resolved by Maven once per Kafka version."""
        if self.jars_cached():
            return self.jar_dir
        mvn = shutil.which("mvn") or sys.exit("stack: Maven (mvn) is needed to fetch Kafka's jars")
        if not shutil.which("java"):
            sys.exit("stack: Java 17+ is needed to run Kafka")
        log(f"fetching Kafka {VERSION} with Maven (once; cached in {self.jar_dir})")
        self.jar_dir.parent.mkdir(parents=True, exist_ok=True)
        # Into a temporary folder first: an interrupted download never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=f"kafka-{VERSION}-", dir=self.jar_dir.parent))
        try:
            subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-Dstyle.color=never",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={tmp}",
                    "-DincludeScope=runtime",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            shutil.rmtree(self.jar_dir, ignore_errors=True)
            tmp.rename(self.jar_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.jar_dir

    def java(self, *jvm: str) -> list[str]:
        return [
            "java",
            *jvm,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp",
            str(self.jar_dir / "*"),
        ]

    # --- the nodes -----------------------------------------------------------------------

    def node_dir(self, node: Node) -> Path:
        return self.state / node.name

    def properties(self, node: Node) -> Path:
        """Render the node's server.properties (0600: it holds the inter-node password)."""
        values = {
            "NODE_ID": str(node.id),
            "HOST": HOST,
            "CLIENT_PORT": str(node.client_port),
            "BROKER_PORT": str(node.broker_port),
            "CONTROLLER_PORT": str(node.controller_port),
            "VOTERS": ",".join(f"{n.id}@{HOST}:{n.controller_port}" for n in NODES),
            "DATA_DIR": str(self.node_dir(node) / "data"),
            "NODE_PASSWORD": self.secrets()["KAFKA_NODE_PASSWORD"],
        }
        template = (KAFKA_DIR / "server.properties.template").read_text()
        text = re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: values[m.group(1)], template)
        return _write_private(self.node_dir(node) / "server.properties", text)

    def format(self, node: Node) -> None:
        """Format a node's storage once, with the SCRAM users in its first metadata."""
        if (self.node_dir(node) / "data" / "meta.properties").exists():
            return
        s = self.secrets()
        scram = [
            arg
            for user in USERS
            for arg in (
                "--add-scram",
                f"SCRAM-SHA-512=[name={user},password={s[f'KAFKA_{user.upper()}_PASSWORD']}]",
            )
        ]
        subprocess.run(
            [
                *self.java("-Dimagegate.kafka.log.level=WARN", "-Xmx256m"),
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                s["KAFKA_CLUSTER_ID"],
                "--config",
                str(self.properties(node)),
                *scram,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def command(self, node: Node) -> list[str]:
        """The node's JVM: a small fixed heap (three of them share a laptop with the rest)."""
        self.ensure_jars()
        self.format(node)
        return [
            *self.java(
                f"-Xmx{HEAP}",
                "-Xms128m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
            ),
            "kafka.Kafka",
            str(self.properties(node)),
        ]

    # --- clients -------------------------------------------------------------------------

    def client_config(self, user: str, **extra: Any) -> dict[str, Any]:
        """confluent-kafka settings for ``user`` (one of USERS) on the client listener."""
        return {
            "bootstrap.servers": BOOTSTRAP,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": self.secrets()[f"KAFKA_{user.upper()}_PASSWORD"],
            **extra,
        }

    def client_properties(self, user: str) -> Path:
        """The same as a Java client properties file (for Kafka's own tools), mode 0600."""
        password = self.secrets()[f"KAFKA_{user.upper()}_PASSWORD"]
        text = (
            f"bootstrap.servers={BOOTSTRAP}\n"
            "security.protocol=SASL_PLAINTEXT\n"
            "sasl.mechanism=SCRAM-SHA-512\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";\n'
        )
        return _write_private(self.state / "kafka" / f"client-{user}.properties", text)

    def admin(self, bootstrap: str = BOOTSTRAP) -> AdminClient:
        return AdminClient(
            self.client_config("admin", **_quiet(), **{"bootstrap.servers": bootstrap})
        )

    def serving(self, node: Node) -> bool:
        """The node takes a client (SASL and all) and the cluster lists it as a live broker.

        The client knows only this node, so its first metadata request goes through it; a
        broker is listed once the controller has it registered and not fenced (caught up).
        """
        try:
            md = self.admin(f"{HOST}:{node.client_port}").list_topics(timeout=3)
        except KafkaException:
            return False
        return node.id in md.brokers

    # --- topics and ACLs -------------------------------------------------------------------

    def setup(self) -> None:
        """Create the topics and make the ACLs exactly ACLS (idempotent)."""
        admin = self.admin()
        wanted = [
            NewTopic(
                name,
                PARTITIONS,
                REPLICATION,
                config={"min.insync.replicas": str(MIN_INSYNC)}
                | ({"retention.ms": "3600000"} if name == BENCH_TOPIC else {}),
            )
            for name in (*TOPICS, BENCH_TOPIC)
        ]
        for name, future in admin.create_topics(wanted, request_timeout=30).items():
            try:
                future.result()
                log(f"created topic {name}")
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        # Topics made by an older layout get the same guarantee.
        min_isr = ConfigEntry(
            "min.insync.replicas", str(MIN_INSYNC), incremental_operation=AlterConfigOpType.SET
        )
        resources = [
            ConfigResource(ResourceType.TOPIC, name, incremental_configs=[min_isr])
            for name in (*TOPICS, BENCH_TOPIC)
        ]
        for future in admin.incremental_alter_configs(resources, request_timeout=30).values():
            future.result()
        everything = AclBindingFilter(
            ResourceType.ANY,
            None,
            ResourcePatternType.ANY,
            None,
            None,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        present = set(admin.describe_acls(everything, request_timeout=30).result())
        extra = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in present - set(ACLS)
        ]
        if extra:
            for future in admin.delete_acls(extra, request_timeout=30).values():
                future.result()
            log(f"removed {len(extra)} ACLs that deploy/local/kafka.py does not declare")
        missing = [b for b in ACLS if b not in present]
        if missing:
            for future in admin.create_acls(missing, request_timeout=30).values():
                future.result()

    # --- Kafka's own tools ---------------------------------------------------------------

    def tool(self, user: str, cls: str, args: list[str]) -> int:
        """Run a class from the jars; ``{client-config}`` in ARGS is ``user``'s properties."""
        self.ensure_jars()
        if "." not in cls:
            cls = f"org.apache.kafka.tools.{cls}"
        config = str(self.client_properties(user))
        args = [a.replace("{client-config}", config) for a in args]
        jvm = [
            "-Xmx512m",
            "-Dimagegate.kafka.log.level=WARN",
            "-Dimagegate.kafka.log.target=SYSTEM_ERR",
        ]
        return subprocess.run([*self.java(*jvm), cls, *args], check=False).returncode


def _quiet() -> dict[str, Any]:
    """librdkafka reports refused connections to a stopped node on stderr; status polls them."""
    silent = logging.getLogger("imagegate.stack.kafka")
    silent.addHandler(logging.NullHandler())
    silent.propagate = False
    return {"logger": silent, "error_cb": lambda _err: None, "log_level": 0}


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path
