"""The event bench's pieces that need no stack (bench/events.py), and how bench/validate.py
treats its rows: every event must arrive (``lossless``), and an ``--only events`` file (no
embedded rows) is valid."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from imagegate.events.envelope import Event, EventType

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


events = load("events")
validate = load("validate")

OWNER_A = "6f1c3a52-8d0e-4d33-9a43-2b8e3f0c1a11"
OWNER_B = "0b7d5e21-4c9f-4e8a-b1d2-7a6c5e4f3d22"


def stored_event() -> Event:
    return Event.new(
        EventType.IMAGE_STORED,
        source="/imagegate",
        subject="images/abc.jpg",
        owner_id=OWNER_A,
        data={"name": "abc.jpg", "owner": OWNER_A, "bytes": 1234, "sha256": "0" * 64},
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert events.percentile(values, 50) == 50
    assert events.percentile(values, 99) == 99
    assert events.percentile(values, 100) == 100
    assert events.percentile([7.0], 99) == 7.0
    assert events.percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_perf_result_takes_the_final_summary() -> None:
    output = (
        "20211 records sent, 4042.2 records/sec (2.61 MB/sec), 120.1 ms avg latency, 500.0 ms "
        "max latency.\n"
        "50000 records sent, 9132.420091 records/sec (5.90 MB/sec), 98.70 ms avg latency, "
        "512.00 ms max latency, 90 ms 50th, 230 ms 95th, 400 ms 99th, 510 ms 99.9th.\n"
    )
    assert events.perf_result(output) == (50000, pytest.approx(9132.420091))
    with pytest.raises(RuntimeError, match="no summary"):
        events.perf_result("Exception in thread main\n")


def test_the_producer_benchmark_gets_the_relays_settings() -> None:
    props = events.relay_producer_props()
    assert props["acks"] == "all"
    assert props["enable.idempotence"] == "true"
    assert props["compression.type"] == "zstd"  # what events/kafka.py sets today
    assert set(props) == {"acks", "enable.idempotence", "compression.type", "linger.ms"}


def test_a_clone_is_the_real_events_size_for_another_owner() -> None:
    template = stored_event()
    copy = events.clone(template, OWNER_B)
    assert copy.id != template.id
    assert copy.owner_id == OWNER_B
    assert copy.data["owner"] == OWNER_B
    assert len(copy.to_json()) == len(template.to_json())
    row = events.outbox_row(copy)
    assert row[0] == copy.id and row[2] == OWNER_B
    assert Event.from_json(row[4]) == copy


def test_receiver_times_each_event_once_over_http() -> None:
    async def scenario() -> Any:
        receiver = events.Receiver()
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sent = []
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for age in (0.010, 0.020):
                    evt = stored_event()
                    evt = Event(
                        **{**evt.__dict__, "time": datetime.now(UTC) - timedelta(seconds=age)}
                    )
                    sent.append(evt)
                    r = await client.post("/hook/0", content=evt.to_json())
                    assert r.status_code == 200
                again = await client.post("/hook/0", content=sent[0].to_json())
                assert again.status_code == 200
                junk = await client.post("/hook/0", content=b"not an event")
                assert junk.status_code == 200
            ids = {e.id for e in sent}
            await receiver.wait_for(ids, time.monotonic() + 5)
            missing = stored_event().id
            await receiver.wait_for({missing}, time.monotonic() + 0.2)  # returns at its deadline
            assert missing not in receiver.latency_ms
        finally:
            server.close()
            await server.wait_closed()
        return receiver, sent

    receiver, sent = asyncio.run(scenario())
    assert set(receiver.latency_ms) == {e.id for e in sent}
    assert receiver.duplicates == 1
    assert receiver.malformed == 1
    # Each latency is at least the event's age when sent, and not much more on loopback.
    assert 10 <= receiver.latency_ms[sent[0].id] < 10_000
    assert 20 <= receiver.latency_ms[sent[1].id] < 10_000


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": "event commit → webhook, 200/s (goal p99 ≤ 250 ms)",
        "target": "stack",
        "metric": "p99 ms",
        "value": 80.0,
        "baseline": 250.0,
        "ratio": 0.32,
        "requests": 4000,
        "errors": 0,
        "non2xx": 0,
        "rejections": False,
        "lossless": True,
    }
    return {**base, **changes}


def test_a_lost_event_fails_a_lossless_row() -> None:
    assert validate.problem(row()) is None
    problem = validate.problem(row(errors=1))  # 1 of 4000: within 1 %, still a failure
    assert problem is not None and "every one must arrive" in problem
    assert validate.problem(row(errors=1, lossless=False)) is None
    assert "lossless" in (validate.problem(row(lossless="yes")) or "")
    assert "target" in (validate.problem(row(target="kafka")) or "")


def test_an_events_only_file_is_valid_and_a_baseline_only_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "ev.json"
    path.write_text(json.dumps([row(), row(target="baseline", baseline=None, ratio=None)]))
    validate.main(str(path))
    path.write_text(json.dumps([row(target="baseline")]))
    with pytest.raises(SystemExit, match="no row measures imagegate"):
        validate.main(str(path))
