"""Signing-key rotation without a restart and without a single valid token refused.

``rotate(settings)`` (``imagegate keys rotate``) adds a new key at the head of the signing key
file — and of the public key file verifiers read, when the settings name one — marked to sign
only ``IMAGEGATE_JWT_KEY_ACTIVATION_SECONDS`` later, and marks the key it replaces to be
dropped once every token it can have signed has expired (its end of signing plus the token
lifetime and twice the leeway). Every process looks at the files again at most a second after
its next token (:class:`~imagegate.security.keys.KeyRing`), so by the time any replica signs
with the new key, every verifier already knows it; and the old key verifies until its last
token has expired. JWKS lists the same keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.security.keys import (
    KeyRing,
    RingKey,
    create_signing_key_file,
    format_ring,
    parse_ring,
    public_jwk,
    public_pem,
    write_atomically,
)
from imagegate.security.tokens import TokenIssuer
from imagegate.settings import Settings


def signing_key_file(settings: Settings) -> Path:
    """Where the signing keys are: the configured file, or one generated in the data dir."""
    return settings.jwt_private_key_file or settings.data_dir / "jwt-signing-key.pem"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One rotation at a time on these files (two at once would lose one's key)."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rotate(settings: Settings, *, now: float | None = None) -> str:
    """Make a new signing key and publish it; returns its ``kid``.

    It signs from ``jwt_key_activation_seconds`` from now, on every security replica that
    reads this signing key file; the key it replaces keeps verifying until its tokens have
    expired. With ``jwt_public_key_file`` set, that file (the verifiers') gets the same keys.
    """
    now = time.time() if now is None else now
    path = signing_key_file(settings)
    create_signing_key_file(path)
    with _locked(path):
        ring = parse_ring(path.read_bytes(), path)
        starts = now + settings.jwt_key_activation_seconds
        # A token signed just before the new key starts is valid this long after.
        ends = starts + settings.token_ttl_seconds + 2 * settings.token_leeway_seconds
        kept = []
        for key in ring:
            if key.retired(now):
                continue  # every token it signed has expired: no longer published
            kept.append(key if key.retire_after is not None else replace(key, retire_after=ends))
        private = ec.generate_private_key(ec.SECP256R1())
        new = RingKey(
            public_jwk(private.public_key())["kid"], private.public_key(), private, starts
        )
        keys = [new, *kept]
        public_file = settings.jwt_public_key_file
        if public_file is not None:
            # Verifiers first (it makes no difference before ``starts``, but costs nothing).
            known = {k.kid for k in keys}
            others = []
            if public_file.exists():
                others = [
                    k
                    for k in parse_ring(public_file.read_bytes(), public_file)
                    if k.kid not in known and not k.retired(now)
                ]
            write_atomically(public_file, format_ring([*keys, *others], private=False), 0o644)
        write_atomically(path, format_ring(keys, private=True), 0o600)
    return new.kid


def describe(settings: Settings, *, now: float | None = None) -> list[dict[str, Any]]:
    """The signing key file's keys, newest first, for printing: kid, state, times."""
    now = time.time() if now is None else now
    path = signing_key_file(settings)
    ring = parse_ring(path.read_bytes(), path)
    current = max(
        (k for k in ring if k.not_before <= now), key=lambda k: k.not_before, default=None
    )
    out = []
    for key in ring:
        if key.retired(now):
            state = "retired"
        elif key.not_before > now:
            state = "next"
        elif current is not None and key.kid == current.kid:
            state = "signing"
        else:
            state = "verifying"
        out.append(
            {
                "kid": key.kid,
                "state": state,
                "signs_from": key.not_before or None,
                "verifies_until": key.retire_after,
            }
        )
    return out


class RingIssuer(TokenIssuer):
    """A TokenIssuer that signs with its ring's current key, read again as it changes."""

    def __init__(self, ring: KeyRing, issuer: str, audience: str, ttl: int) -> None:
        self.ring = ring
        key, _ = ring.signer()
        super().__init__(key, issuer, audience, ttl)

    def issue(self, *args: Any, **kwargs: Any) -> str:
        # Synchronous: no other coroutine runs between choosing the key and signing with it.
        self._key, self._kid = self.ring.signer()
        return super().issue(*args, **kwargs)


def public_keys_pem(settings: Settings) -> str:
    """Every published public key of the signing key file (the next, current and previous
    ones), for verifiers' ``IMAGEGATE_JWT_PUBLIC_KEY_FILE`` (``imagegate keys public``)."""
    path = signing_key_file(settings)
    create_signing_key_file(path)
    now = time.time()
    keys = [k for k in parse_ring(path.read_bytes(), path) if not k.retired(now)]
    if len(keys) == 1 and keys[0].retire_after is None:
        # No rotation under way: the plain PEM any tool reads, as before rotations existed.
        return public_pem(keys[0].public).decode()
    return format_ring(keys, private=False).decode()
