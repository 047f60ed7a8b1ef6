"""Webhook secrets and signatures, as the Standard Webhooks specification defines them.

The signature is ``v1,`` + base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))
where the key is the base64 part of the ``whsec_…`` secret; receivers verify with any
Standard Webhooks library (``standardwebhooks.Webhook(secret).verify(body, headers)``).
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

from imagegate import __version__

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32  # HMAC-SHA256's own key size; the specification asks for 24 to 64
USER_AGENT = f"imagegate-webhooks/{__version__}"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers of one delivery attempt: ``webhook-id`` (the event's id, the same on every
    attempt so receivers can drop duplicates), ``webhook-timestamp`` (Unix seconds, this
    attempt's) and ``webhook-signature``, with the content type and our user agent."""
    when = datetime.fromtimestamp(timestamp, UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode("utf-8"))
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
