"""The event envelope: CloudEvents 1.0 in JSON, one type per committed change."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final


class EventType:
    """Every event type this system emits (later issues add theirs here)."""

    ACCOUNT_CREATED: Final = "imagegate.account.created"
    ACCOUNT_DELETED: Final = "imagegate.account.deleted"
    # Sessions ended (logout, password change, a reused refresh token): every replica's
    # account feed refuses their access tokens (security/sessions.py); a webhook may use it
    # to tell the person (a refresh token used twice may mean a stolen one).
    SESSIONS_REVOKED: Final = "imagegate.account.sessions_revoked"
    IMAGE_STORED: Final = "imagegate.image.stored"
    IMAGE_DELETED: Final = "imagegate.image.deleted"
    IMAGE_VISIBILITY_CHANGED: Final = "imagegate.image.visibility_changed"


ALL_TYPES: tuple[str, ...] = (
    EventType.ACCOUNT_CREATED,
    EventType.ACCOUNT_DELETED,
    EventType.SESSIONS_REVOKED,
    EventType.IMAGE_STORED,
    EventType.IMAGE_DELETED,
    EventType.IMAGE_VISIBILITY_CHANGED,
)
SPEC_VERSION = "1.0"
# A CloudEvents extension attribute (lower-case letters and digits only): the user the event
# belongs to, which is also the Kafka key, so per-user order holds on one partition.
OWNER_ATTRIBUTE = "ownerid"


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One event: what changed (``type``, ``subject``, ``data``), whose it is, and when."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    owner_id: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls, type: str, *, source: str, subject: str, owner_id: str, data: Mapping[str, Any]
    ) -> Event:
        """A fresh event with a new id, timed now."""
        return cls(str(uuid.uuid4()), type, source, subject, datetime.now(UTC), owner_id, data)

    def to_json(self) -> bytes:
        """The CloudEvents 1.0 JSON form (structured mode)."""
        body = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": _rfc3339(self.time),
            "datacontenttype": "application/json",
            OWNER_ATTRIBUTE: self.owner_id,
            "data": dict(self.data),
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        """Parse what :meth:`to_json` wrote; ValueError for anything else."""
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or body.get("specversion") != SPEC_VERSION:
                raise ValueError("not a CloudEvents 1.0 event")
            data = body.get("data", {})
            if not isinstance(data, dict):
                raise ValueError("data is not an object")
            when = datetime.fromisoformat(str(body["time"]).replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("time without a zone")
            return cls(
                id=str(body["id"]),
                type=str(body["type"]),
                source=str(body["source"]),
                subject=str(body["subject"]),
                time=when.astimezone(UTC),
                owner_id=str(body[OWNER_ATTRIBUTE]),
                data=data,
            )
        except (KeyError, TypeError, ValueError) as exc:  # JSON errors are ValueErrors
            raise ValueError(f"not an imagegate event: {exc}") from exc


def topic_of(type: str, prefix: str) -> str:
    """The Kafka topic of an event type: account.* → <prefix>.accounts, image.* → .images."""
    kind = type.removeprefix("imagegate.").split(".", 1)[0]
    if kind == "account":
        return f"{prefix}.accounts"
    if kind == "image":
        return f"{prefix}.images"
    raise ValueError(f"no topic for event type {type!r}")
