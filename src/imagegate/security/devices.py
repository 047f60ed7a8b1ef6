"""Device cookies: a client that logged in before is recognised, so that strangers' failures
on its login cannot lock it out (OWASP, "Slow Down Online Guessing Attacks with Device
Cookies").

A successful login sets a random cookie (256 bits); the database keeps only its SHA-256, bound
to the account, with an expiry. Attempts on that login that present it are throttled on their
own key (``device:<hash>``) instead of the login's. The cookie never replaces the password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db.models import LoginDevice

COOKIE = "imagegate_device"
COOKIE_PATH = "/v1/token"
MAX_PER_USER = 20  # the newest ones are kept: a bound on rows per account
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def trusted(session: AsyncSession, token: str | None, user_id: str, now: float) -> str | None:
    """The hash of ``token`` when it is an unexpired device cookie of ``user_id``, else None."""
    if not token or len(token) > 64 or not set(token) <= _TOKEN_CHARS:
        return None
    digest = token_hash(token)
    row = await session.get(LoginDevice, digest)
    if row is None or row.expires <= now or not hmac.compare_digest(row.user_id, user_id):
        return None
    return digest


async def issue(
    session: AsyncSession, user_id: str, now: float, lifetime: float, replaces: str | None
) -> str:
    """A new device cookie for ``user_id`` (replacing the ``replaces`` hash: cookies rotate on
    each login); drops the account's expired and surplus ones. The caller commits."""
    token = secrets.token_urlsafe(32)
    if replaces is not None:
        await session.execute(delete(LoginDevice).where(LoginDevice.token_hash == replaces))
    session.add(
        LoginDevice(
            token_hash=token_hash(token), user_id=user_id, created=now, expires=now + lifetime
        )
    )
    await session.flush()
    newest = (
        select(LoginDevice.token_hash)
        .where(LoginDevice.user_id == user_id)
        .order_by(LoginDevice.created.desc())
        .limit(MAX_PER_USER)
    )
    await session.execute(
        delete(LoginDevice).where(
            LoginDevice.user_id == user_id,
            (LoginDevice.expires <= now) | LoginDevice.token_hash.not_in(newest),
        )
    )
    return token
