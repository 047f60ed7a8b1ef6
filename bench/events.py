"""The event rows of bench/run (issue 11, item 8), against the local stack.

- End-to-end latency, commit → worker effect: outbox rows committed at a steady rate, each
  delivered as a webhook to a receiver on loopback in this process; latency = receipt time -
  the event's CloudEvents ``time``. Every committed event must arrive (a missing one is lost).
- Relay throughput: a backlog of outbox rows drained by one relay, next to Kafka's own producer
  benchmark (ProducerPerformance, from the stack's jars) sending the same records with the
  relay's producer settings, in alternating rounds.

Nothing here imports bench.py (which runs as ``__main__``): it measures and returns numbers;
bench.py turns them into rows.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg

from imagegate.events.envelope import Event, EventType
from imagegate.events.kafka import producer_config
from imagegate.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

WORKER_GROUP = "imagegate-worker"
RELAYS = ("relay-1", "relay-2")
WORKERS = ("worker-1", "worker-2")
INSERT = (
    "INSERT INTO outbox_events (id, type, owner_id, subject, payload, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
COPY = "COPY outbox_events (id, type, owner_id, subject, payload, created_at) FROM STDIN"
# A delivery that failed is retried after IMAGEGATE_WEBHOOK_RETRY_BASE_SECONDS (5 s): waiting
# this long after the last commit lets a retried event arrive late (a latency, not a loss).
ARRIVAL_GRACE_SECONDS = 30.0
WARM_UP_SECONDS = 5.0
PERF_LINE = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")


# --- small pieces (unit-tested in tests/unit/test_bench_events.py) ------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q ≤ 100) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def perf_result(output: str) -> tuple[int, float]:
    """(records sent, records/s) of ProducerPerformance's final summary line."""
    found = PERF_LINE.findall(output)
    if not found:
        raise RuntimeError(f"ProducerPerformance printed no summary:\n{output[-2000:]}")
    sent, rate = found[-1]
    return int(sent), float(rate)


def relay_producer_props() -> dict[str, str]:
    """The relay's producer settings that shape throughput, as the Java producer names them
    (events/kafka.py: acks=all, idempotence, its compression and linger)."""
    config = producer_config(Settings())
    return {
        k: str(config[k]).lower()
        for k in ("acks", "enable.idempotence", "compression.type", "linger.ms")
    }


def clone(template: Event, owner_id: str) -> Event:
    """A new event (fresh id, timed now) of the template's type, size and data, for
    ``owner_id``: the same bytes on the wire as the real event, another owner."""
    data = dict(template.data)
    if "owner" in data:
        data["owner"] = owner_id
    return Event.new(
        template.type,
        source=template.source,
        subject=template.subject,
        owner_id=owner_id,
        data=data,
    )


def outbox_row(evt: Event) -> tuple[str, str, str, str, str, datetime]:
    """The columns ``emit`` writes (the database fills seq and txid)."""
    return (evt.id, evt.type, evt.owner_id, evt.subject, evt.to_json().decode(), evt.time)


@dataclass
class Receiver:
    """A webhook receiver on loopback: the first arrival of each event id, with the latency
    from the event's ``time`` to the moment its request body was in."""

    latency_ms: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    malformed: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def receive(self, body: bytes, at: float) -> None:
        try:
            event = Event.from_json(body)
        except ValueError:
            self.malformed += 1
            return
        if event.id in self.latency_ms:
            self.duplicates += 1  # a redelivery: receivers drop it by webhook-id
            return
        self.latency_ms[event.id] = (at - event.time.timestamp()) * 1000
        self.changed.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 requests with a Content-Length (the sender's), each answered 200."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.receive(body, time.time())
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def wait_for(self, ids: set[str], deadline: float) -> None:
        """Until every id arrived or ``deadline`` (monotonic) passed."""
        while not ids <= self.latency_ms.keys() and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break


# --- the stack --------------------------------------------------------------------------


@dataclass
class Account:
    token: str
    user_id: str


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    sent: int
    lost: int
    duplicates: int


@dataclass
class Rate:
    per_second: float
    count: int
    lost: int


def database_url(stack: ModuleType) -> str:
    return str(stack.service_env("relay")["IMAGEGATE_DATABASE_URL"])


def template_event(stack: ModuleType, owner_id: str) -> Event:
    """The newest real ``image.stored`` event of ``owner_id`` in the outbox."""
    with psycopg.connect(database_url(stack)) as conn:
        row = conn.execute(
            "SELECT payload FROM outbox_events WHERE owner_id = %s AND type = %s"
            " ORDER BY seq DESC LIMIT 1",
            (owner_id, EventType.IMAGE_STORED),
        ).fetchone()
    if row is None:
        raise RuntimeError("no image.stored event of the bench account in the outbox")
    return Event.from_json(row[0])


def outbox_depth(conn: psycopg.Connection[Any], after_seq: int = 0) -> int:
    row = conn.execute(
        "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND seq > %s",
        (after_seq,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_drained(stack: ModuleType, timeout: float = 120) -> None:
    with psycopg.connect(database_url(stack), autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while (depth := outbox_depth(conn)) and time.monotonic() < deadline:
            time.sleep(0.1)
    if depth:
        raise RuntimeError(f"the outbox still holds {depth} unpublished events")


def measure_latency(
    stack: ModuleType,
    api: str,
    accounts: Sequence[Account],
    template: Event,
    *,
    rate: float,
    seconds: float,
) -> Latency:
    """Commit ``rate`` outbox rows a second for ``seconds`` (taking turns among ``accounts``,
    each with a webhook to a receiver here) and time each one's arrival."""
    return asyncio.run(_latency(stack, api, accounts, template, rate, seconds))


async def _latency(
    stack: ModuleType,
    api: str,
    accounts: Sequence[Account],
    template: Event,
    rate: float,
    seconds: float,
) -> Latency:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hooks: list[tuple[Account, str]] = []
    client = httpx.AsyncClient(base_url=api, timeout=30)
    try:
        for i, account in enumerate(accounts):
            r = await client.post(
                "/v1/webhooks",
                json={"url": f"http://127.0.0.1:{port}/hook/{i}"},
                headers={"Authorization": f"Bearer {account.token}"},
            )
            if r.status_code == 422:
                raise RuntimeError(
                    f"webhook to loopback refused ({r.text}): the services need "
                    "IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 (deploy/local/stack.py "
                    "sets it; restart security-1/2 and worker-1/2 if started before that)"
                )
            r.raise_for_status()
            hooks.append((account, r.json()["id"]))
        async with await psycopg.AsyncConnection.connect(
            database_url(stack), autocommit=True
        ) as conn:
            # Warm-up at the full rate, not counted: the first seconds after the webhooks are
            # made run at several times the steady latency (first statements of their kind,
            # the consumers' fetch sizes growing); the goal is the steady state.
            warm = await _insert_steady(conn, accounts, template, rate, rate * WARM_UP_SECONDS)
            await receiver.wait_for(warm, time.monotonic() + ARRIVAL_GRACE_SECONDS)
            if not warm <= receiver.latency_ms.keys():
                raise RuntimeError("the warm-up events did not arrive: is the stack healthy?")
            measured = await _insert_steady(conn, accounts, template, rate, rate * seconds)
            await receiver.wait_for(measured, time.monotonic() + ARRIVAL_GRACE_SECONDS)
    finally:
        # Deleting a webhook deletes its deliveries: nothing is left to retry for 24 hours.
        for account, hook_id in hooks:
            await client.delete(
                f"/v1/webhooks/{hook_id}", headers={"Authorization": f"Bearer {account.token}"}
            )
        await client.aclose()
        server.close()
        await server.wait_closed()
    arrived = [receiver.latency_ms[i] for i in measured if i in receiver.latency_ms]
    if not arrived:
        raise RuntimeError("no measured event arrived")
    return Latency(
        percentile(arrived, 50),
        percentile(arrived, 99),
        len(measured),
        len(measured) - len(arrived),
        receiver.duplicates,
    )


async def _insert_steady(
    conn: psycopg.AsyncConnection[Any],
    accounts: Sequence[Account],
    template: Event,
    rate: float,
    count: float,
) -> set[str]:
    """``count`` events at ``rate`` a second, each committed alone (as a change's transaction
    commits its event); a late start is caught up, not dropped. Returns their ids."""
    ids: set[str] = set()
    start = time.monotonic()
    for i in range(int(count)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        evt = clone(template, accounts[i % len(accounts)].user_id)  # timed now: the commit
        await conn.execute(INSERT, outbox_row(evt))
        ids.add(evt.id)
    return ids


class RelayBench:
    """One relay alone draining a backlog, and Kafka's producer benchmark, on the same records.

    Entered: the outbox drained, both relays and both workers stopped, relay-1 started alone
    (and holding the lease) with an empty outbox. The workers are stopped so that neither
    side shares the two cores with consumers (the producer benchmark's topic has none). Each
    relay round commits its backlog in one transaction and times from that commit to the last
    row marked published (its ``published_at``), so the relay's start-up is not in it. Left:
    the bench's rows deleted from the outbox, relay-2 and the workers started again, and
    waited for until the workers have handled everything (their group's lag is 0).
    """

    def __init__(
        self,
        stack: ModuleType,
        work: Path,
        accounts: Sequence[Account],
        template: Event,
        *,
        catch_up_timeout: float,
    ) -> None:
        self.stack = stack
        self.work = work
        self.accounts = accounts
        self.template = template
        self.catch_up_timeout = catch_up_timeout
        self.payloads = work / "event-payloads.txt"
        self.first_seq: int | None = None

    def __enter__(self) -> RelayBench:
        wait_drained(self.stack)
        stopping = [
            threading.Thread(target=self.stack.COMPONENTS[name].stop)
            for name in (*RELAYS, *WORKERS)
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        try:
            self.stack.COMPONENTS[RELAYS[0]].start()
            self._wait_relay_active()
            # Distinct records of the real size for the producer benchmark (it picks one at
            # random per record): the same bytes and compressibility as the relay's values.
            lines = (
                outbox_row(clone(self.template, a.user_id))[4] for a in list(self.accounts) * 125
            )
            self.payloads.write_text("\n".join(lines) + "\n")
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _wait_relay_active(self, timeout: float = 60) -> None:
        url = f"http://127.0.0.1:{self.stack.RELAY_PORTS[0]}/metrics"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(r"^imagegate_relay_active 1(\.0)?$", httpx.get(url).text, re.M):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{RELAYS[0]} did not take the lease")

    def relay_round(self, count: int, timeout: float = 300) -> Rate:
        """Commit ``count`` events at once and time until the relay has published them all."""
        owners = [a.user_id for a in self.accounts]
        rows = [outbox_row(clone(self.template, owners[i % len(owners)])) for i in range(count)]
        with psycopg.connect(database_url(self.stack)) as conn:
            before = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox_events").fetchone()
            assert before is not None
            after_seq = int(before[0])
            if self.first_seq is None:
                self.first_seq = after_seq
            with conn.cursor() as cur, cur.copy(COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            committed = time.time()
            conn.autocommit = True
            deadline = time.monotonic() + timeout
            while (left := outbox_depth(conn, after_seq)) and time.monotonic() < deadline:
                time.sleep(0.05)
            last = conn.execute(
                "SELECT max(published_at) FROM outbox_events WHERE seq > %s", (after_seq,)
            ).fetchone()
        if last is None or last[0] is None:
            raise RuntimeError("the relay published nothing")
        elapsed = last[0].timestamp() - committed
        return Rate((count - left) / max(elapsed, 1e-3), count, left)

    def tool_round(self, count: int) -> Rate:
        """Kafka's ProducerPerformance: ``count`` of the same records as fast as it can."""
        props = [f"{k}={v}" for k, v in relay_producer_props().items()]
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "deploy" / "local" / "stack.py"),
                "kafka-tool",
                "ProducerPerformance",
                "--topic",
                self.stack.kafka.BENCH_TOPIC,
                "--num-records",
                str(count),
                "--payload-file",
                str(self.payloads),
                "--throughput",
                "-1",
                "--producer.config",
                "{client-config}",
                "--producer-props",
                *props,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ProducerPerformance failed:\n{done.stderr[-2000:]}")
        sent, rate = perf_result(done.stdout)
        return Rate(rate, count, count - sent)

    def _restore(self) -> None:
        if self.first_seq is not None:
            # The bench's synthetic rows, published: what the relay's prune would remove
            # after the retention (3 days), removed now.
            with psycopg.connect(database_url(self.stack), autocommit=True) as conn:
                conn.execute(
                    "DELETE FROM outbox_events WHERE seq > %s AND published_at IS NOT NULL",
                    (self.first_seq,),
                )
        launched = [
            (self.stack.COMPONENTS[n], self.stack.COMPONENTS[n].launch())
            for n in (*RELAYS, *WORKERS)
        ]
        for component, proc in launched:
            if proc is not None:
                component.wait(proc)
        wait_caught_up(self.stack, self.catch_up_timeout)


def worker_lag(stack: ModuleType) -> int:
    """Messages in the event topics that the workers' group has not committed yet."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = stack.CLUSTER.admin()
    meta = admin.list_topics(timeout=10)
    parts = [TopicPartition(t, p) for t in stack.kafka.TOPICS for p in meta.topics[t].partitions]
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=10)
    group = ConsumerGroupTopicPartitions(WORKER_GROUP, parts)
    committed = admin.list_consumer_group_offsets([group])[WORKER_GROUP].result()
    done = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed.topic_partitions}
    return sum(
        max(0, future.result().offset - done.get((tp.topic, tp.partition), 0))
        for tp, future in ends.items()
    )


def wait_caught_up(stack: ModuleType, timeout: float) -> None:
    """Until the workers have handled every event in the topics (or ``timeout``)."""
    from confluent_kafka import KafkaException

    started, lag = time.monotonic(), -1  # -1: not known
    while time.monotonic() - started < timeout:
        try:
            lag = worker_lag(stack)
        except KafkaException as exc:  # e.g. a coordinator still loading after a node restart
            print(f"  group offsets not readable yet: {exc}", flush=True)
            lag = -1
        if not lag:
            break
        time.sleep(1)
    spent = time.monotonic() - started
    if lag:
        print(f"  workers still {lag} events behind after {spent:.0f} s", flush=True)
    else:
        print(f"  workers caught up ({spent:.0f} s after the relay rounds)", flush=True)


def user_id(api: str, token: str) -> str:
    r = httpx.get(f"{api}/v1/user", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return str(json.loads(r.text)["id"])
