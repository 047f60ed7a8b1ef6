"""Password hashing (Argon2id) and the password and login policies."""

from __future__ import annotations

import gzip
import re
from functools import cache
from importlib import resources

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from imagegate.errors import Unprocessable

MAX_PASSWORD_LENGTH = 1024
LOGIN_RE = re.compile(r"[a-z0-9._-]{3,64}")


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of 20,000 common passwords (see ``data/NOTICE``), lower-cased."""
    raw = resources.files("imagegate.security").joinpath("data/common-passwords.txt.gz")
    text = gzip.decompress(raw.read_bytes()).decode()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def is_valid_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (a JSON ``\\ud800`` escape): it cannot be
    encoded to UTF-8, so it can be neither hashed nor stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_login(login: str) -> str:
    """Logins compare case-insensitively, so they are stored lower-cased."""
    login = login.strip().lower()
    if not LOGIN_RE.fullmatch(login):
        raise Unprocessable("login must be 3 to 64 characters of a-z, 0-9, '.', '_' and '-'")
    return login


def check_password_policy(password: str, login: str, min_length: int) -> None:
    """NIST SP 800-63B: length and a block list, no composition rules, never truncated."""
    if not is_valid_unicode(password):
        raise Unprocessable("password must be valid Unicode text (no lone surrogates)")
    if len(password) < min_length:
        raise Unprocessable(f"password must be at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Unprocessable(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if password.lower() == login.lower():
        raise Unprocessable("password must not be the same as the login")
    if password.lower() in common_passwords():
        raise Unprocessable("password is too common; choose another")


class Passwords:
    """Argon2id hashing off the event loop, with a bound on hashes running at once."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int, concurrency: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        # Each hash holds memory_kib of RAM: the limiter keeps a login burst from exhausting it.
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._dummy_hash = self._hasher.hash("imagegate dummy password for timing")

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check ``password``; with no stored hash, spend the same time on a dummy and fail."""
        target = stored_hash or self._dummy_hash

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerificationError, InvalidHashError, UnicodeEncodeError):
                return False  # a password that cannot be encoded was never hashed

        ok = await anyio.to_thread.run_sync(check, limiter=self._limiter)
        return ok and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
