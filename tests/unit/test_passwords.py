from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from imagegate.errors import Unprocessable
from imagegate.security.passwords import (
    Passwords,
    check_password_policy,
    common_passwords,
    normalize_login,
)


def test_common_password_list_is_large_and_lowercase() -> None:
    words = common_passwords()
    assert len(words) >= 10_000
    assert "password" in words
    assert all(w == w.lower() for w in words)


@pytest.mark.parametrize("login", ["Bob", " bob ", "BOB"])
def test_logins_fold_to_lower_case(login: str) -> None:
    assert normalize_login(login) == "bob"


@pytest.mark.parametrize("login", ["ab", "a" * 65, "bad/slash", "tab\tbed", "ünï", ""])
def test_bad_logins(login: str) -> None:
    with pytest.raises(Unprocessable):
        normalize_login(login)


@pytest.mark.parametrize(
    "password", ["short", "x" * 1025, "alice-smith", "ALICE-SMITH", "qwertyuiop123"]
)
def test_policy_rejects(password: str) -> None:
    with pytest.raises(Unprocessable):
        check_password_policy(password, "alice-smith", 12)


def test_policy_accepts_long_unusual_passwords_without_composition_rules() -> None:
    check_password_policy("all lower case words here", "alice", 12)
    check_password_policy("p" * 1024, "alice", 12)


async def test_hash_uses_argon2id_with_owasp_minimums() -> None:
    passwords = Passwords(2, 19 * 1024, 1, concurrency=2)
    hashed = await passwords.hash("a fine passphrase")
    assert hashed.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in hashed
    assert await passwords.verify(hashed, "a fine passphrase")
    assert not await passwords.verify(hashed, "a fine passphrasE")
    assert not await passwords.verify(None, "anything")


def test_weaker_stored_hashes_need_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("x")
    passwords = Passwords(2, 19 * 1024, 1, concurrency=1)
    assert passwords.needs_rehash(weak)
