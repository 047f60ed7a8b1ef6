"""Which handlers run for which event type: the one place to add one (a line each).

Key: an event type from :class:`~imagegate.events.envelope.EventType`, or "*" for every
event. Handlers of a type run first, then those of "*", in the order listed.
"""

from __future__ import annotations

from imagegate.events.envelope import EventType
from imagegate.events.handlers import ANY_TYPE, Handler, Handlers
from imagegate.events.purge import purge_account
from imagegate.variants.handler import make_variants
from imagegate.webhooks.handler import queue_deliveries

_ENTRIES: list[tuple[str, Handler]] = [
    (EventType.ACCOUNT_DELETED, purge_account),
    (EventType.IMAGE_STORED, make_variants),
    (ANY_TYPE, queue_deliveries),
]

HANDLERS: Handlers = {
    key: tuple(handler for k, handler in _ENTRIES if k == key) for key, _ in _ENTRIES
}

__all__ = ["ANY_TYPE", "HANDLERS"]
