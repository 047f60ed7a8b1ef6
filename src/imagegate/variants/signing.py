"""Signed URLs for custom sizes: HMAC-SHA256 over the path and its size parameters.

The first key of ``variant_signing_keys`` signs and every key verifies, so keys rotate without
downtime (add the new key first, drop the old one once its URLs are no longer used), as
imgproxy does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr


def signed_message(path: str, width: int | None, height: int | None, fit: str) -> bytes:
    """What a signature covers: the path and every size parameter, in a fixed order."""
    return f"{path}?w={width or ''}&h={height or ''}&fit={fit}".encode()


def sign(key: SecretStr, message: bytes) -> str:
    digest = hmac.new(key.get_secret_value().encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(keys: Sequence[SecretStr], message: bytes, signature: str) -> bool:
    """True when ``signature`` is the signature of ``message`` under any of ``keys``."""
    given = signature.encode("utf-8", "replace")  # bytes: any text compares, none raises
    return any(hmac.compare_digest(sign(key, message).encode(), given) for key in keys)
