"""Creating and removing accounts: shared by the register route and the CLI."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.db import queries
from imagegate.db.models import User
from imagegate.db.types import utcnow
from imagegate.errors import Conflict
from imagegate.security.passwords import Passwords, check_password_policy, normalize_login


async def create_account(
    session: AsyncSession,
    passwords: Passwords,
    login: str,
    password: str,
    *,
    min_length: int,
    enforce_policy: bool = True,
) -> User:
    """Validate, hash and insert a user; commits. 422 for policy, 409 when the login is taken."""
    login = normalize_login(login)
    if enforce_policy:
        check_password_policy(password, login, min_length)
    if await queries.user_by_login(session, login) is not None:
        raise Conflict("login is already taken")
    user = User(
        id=str(uuid.uuid4()),
        login=login,
        password_hash=await passwords.hash(password),
        created_at=utcnow(),
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:  # a concurrent registration won the race
        await session.rollback()
        raise Conflict("login is already taken") from exc
    return user
