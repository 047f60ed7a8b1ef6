"""Events: every committed change writes a CloudEvents envelope to an outbox table in the same
transaction; the inline dispatcher (embedded) or the Kafka relay and worker (production)
run the handlers listed in :mod:`imagegate.events.registry`."""

from imagegate.events.envelope import ALL_TYPES, Event, EventType, topic_of
from imagegate.events.handlers import ANY_TYPE, Handler, HandlerContext, dispatch
from imagegate.events.outbox import emit

__all__ = [
    "ALL_TYPES",
    "ANY_TYPE",
    "Event",
    "EventType",
    "Handler",
    "HandlerContext",
    "dispatch",
    "emit",
    "topic_of",
]
