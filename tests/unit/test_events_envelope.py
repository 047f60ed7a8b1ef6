"""The event envelope (CloudEvents 1.0 JSON) and the JSON Schemas published for each type."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from imagegate.events.envelope import ALL_TYPES, Event, EventType, topic_of

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "events"
OWNER = "0b7e5f5e-8d0c-4a57-9a43-6a2c3c1f0f11"
NAME = "3f1c2b9e-1d2a-4c3b-8a4d-5e6f7a8b9c0d.jpg"
WHEN = "2026-01-02T03:04:05.678901+00:00"

# A valid data object of each type, as the code emits it (tests/embedded/test_events.py checks
# the real ones against the same schemas).
DATA: dict[str, dict[str, Any]] = {
    EventType.ACCOUNT_CREATED: {"id": OWNER, "login": "alice", "created_at": WHEN},
    EventType.ACCOUNT_DELETED: {"id": OWNER, "login": "alice", "images": 2, "bytes": 3000},
    EventType.SESSIONS_REVOKED: {
        "id": OWNER,
        "sessions": ["a1b2c3"],
        "tokens_valid_after": None,
        "reason": "logout",
    },
    EventType.IMAGE_STORED: {
        "name": NAME,
        "owner": OWNER,
        "content_type": "image/jpeg",
        "bytes": 1683,
        "uploaded_bytes": 2000,
        "width": 64,
        "height": 48,
        "frames": 1,
        "sha256": "0c" * 32,
        "visibility": "public",
        "created_at": WHEN,
        "url": f"/images/{NAME}",
    },
    EventType.IMAGE_DELETED: {"name": NAME, "owner": OWNER, "visibility": "private", "bytes": 9},
    EventType.IMAGE_VISIBILITY_CHANGED: {
        "name": NAME,
        "owner": OWNER,
        "visibility": "private",
        "previous": "public",
    },
}


def validator(type: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{type}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def event(type: str, **data: Any) -> Event:
    subject = f"images/{NAME}" if ".image." in type else f"users/{OWNER}"
    return Event.new(
        type,
        source="/imagegate",
        subject=subject,
        owner_id=OWNER,
        data={**DATA[type], **data},
    )


def test_round_trip_keeps_every_field() -> None:
    original = event(EventType.IMAGE_STORED)
    raw = original.to_json()
    assert Event.from_json(raw) == original
    body = json.loads(raw)
    assert set(body) == {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "ownerid",
        "data",
    }
    assert body["specversion"] == "1.0"
    assert body["datacontenttype"] == "application/json"
    assert body["time"].endswith("Z")  # RFC 3339, UTC


def test_time_is_kept_to_the_microsecond_and_in_utc() -> None:
    when = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    original = Event("id-1", EventType.ACCOUNT_CREATED, "/x", "users/1", when, OWNER, {})
    parsed = Event.from_json(original.to_json())
    assert parsed.time == when and parsed.time.tzinfo is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"specversion": "0.3"}',
        b'{"specversion": "1.0", "id": "x"}',  # no type, time, ...
        b'{"specversion": "1.0", "id": "x", "type": "t", "source": "s", "subject": "u",'
        b' "time": "2026-01-01T00:00:00", "ownerid": "o", "data": {}}',  # time without a zone
        b'{"specversion": "1.0", "id": "x", "type": "t", "source": "s", "subject": "u",'
        b' "time": "2026-01-01T00:00:00Z", "ownerid": "o", "data": []}',
    ],
)
def test_from_json_refuses_what_is_not_an_event(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not an imagegate event"):
        Event.from_json(raw)


def test_topics_by_type() -> None:
    assert topic_of(EventType.ACCOUNT_CREATED, "imagegate") == "imagegate.accounts"
    assert topic_of(EventType.ACCOUNT_DELETED, "p") == "p.accounts"
    assert topic_of(EventType.IMAGE_STORED, "imagegate") == "imagegate.images"
    assert topic_of(EventType.IMAGE_DELETED, "p") == "p.images"
    with pytest.raises(ValueError, match="no topic"):
        topic_of("imagegate.other.thing", "p")


def test_one_schema_per_type_and_no_other() -> None:
    names = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert names == {f"{t}.schema.json" for t in ALL_TYPES}


@pytest.mark.parametrize("type", ALL_TYPES)
def test_each_schema_accepts_its_event(type: str) -> None:
    validator(type).validate(json.loads(event(type).to_json()))


@pytest.mark.parametrize("type", ALL_TYPES)
@pytest.mark.parametrize("leak", ["password", "password_hash", "token", "secret"])
def test_each_schema_refuses_a_leaked_field(type: str, leak: str) -> None:
    body = json.loads(event(type, **{leak: "x"}).to_json())
    assert not validator(type).is_valid(body)


@pytest.mark.parametrize("type", ALL_TYPES)
def test_each_schema_refuses_another_type_and_a_missing_field(type: str) -> None:
    body = json.loads(event(type).to_json())
    other = next(t for t in ALL_TYPES if t != type)
    assert not validator(type).is_valid({**body, "type": other})
    data = dict(body["data"])
    data.pop(sorted(data)[0])
    assert not validator(type).is_valid({**body, "data": data})
