"""The signing key ring and its rotation (security/keys.py, security/rotation.py), on files in
a temp folder with the clocks controlled: a new key is published before it signs, the old one
verifies until its tokens have expired, unknown kids reload the files at most once per
interval, and plain one-key PEM files keep working."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.security.keys import (
    KeyRing,
    format_ring,
    load_or_create_signing_key,
    load_public_keys,
    parse_ring,
    private_pem,
    public_jwk,
)
from imagegate.security.rotation import RingIssuer, describe, rotate
from imagegate.security.tokens import Identity, InvalidToken, TokenVerifier
from imagegate.settings import Settings


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        jwt_public_key_file=tmp_path / "public.pem",
        jwt_key_activation_seconds=10,
        token_ttl_seconds=900,
        token_leeway_seconds=60,
        **extra,  # type: ignore[arg-type]
    )


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_a_plain_pem_file_is_a_one_key_ring(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "k.pem"
    path.write_bytes(private_pem(key))
    [only] = parse_ring(path.read_bytes(), path)
    assert only.kid == public_jwk(key.public_key())["kid"]
    assert only.not_before == 0 and only.retire_after is None
    assert public_jwk(load_or_create_signing_key(path).public_key())["kid"] == only.kid
    ring = KeyRing(path, None)
    assert list(ring) == [only.kid] and ring.signer()[1] == only.kid


def test_not_p256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(private_pem(ec.generate_private_key(ec.SECP384R1())))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="P-256"):
        parse_ring(path.read_bytes(), path)
    path.write_text("no keys here\n")
    with pytest.raises(ValueError, match="no keys"):
        parse_ring(path.read_bytes(), path)


def test_rotation_publishes_first_then_signs(tmp_path: Path) -> None:
    s = settings(tmp_path)
    t0 = time.time()
    clock = Clock(t0)
    mono = Clock(1000.0)
    ring = KeyRing(
        s.data_dir / "jwt-signing-key.pem", s.jwt_public_key_file, clock=clock, monotonic=mono
    )
    issuer = RingIssuer(ring, "imagegate", "imagegate", 900)
    old_token = issuer.issue(Identity("u1", "alice"))
    old_kid = kid_of(old_token)

    new_kid = rotate(s, now=t0)
    assert new_kid != old_kid
    # Verifiers elsewhere: the public file has both, newest first.
    public = parse_ring(s.jwt_public_key_file.read_bytes(), s.jwt_public_key_file)  # type: ignore[union-attr]
    assert [k.kid for k in public] == [new_kid, old_kid]
    assert public[0].not_before == pytest.approx(t0 + 10, abs=1)
    assert public[1].retire_after == pytest.approx(t0 + 10 + 900 + 120, abs=1)
    assert {p["state"] for p in describe(s, now=t0)} == {"next", "signing"}

    # Within the interval of the last look the files are not read again.
    assert issuer.issue(Identity("u1", "alice")) and list(ring) == [old_kid]
    mono.now += 1.0
    clock.now = t0 + 5  # published, not signing yet
    assert kid_of(issuer.issue(Identity("u1", "alice"))) == old_kid
    assert set(ring) == {old_kid, new_kid}
    clock.now = t0 + 11
    new_token = issuer.issue(Identity("u1", "alice"))
    assert kid_of(new_token) == new_kid


def test_verifier_reloads_on_unknown_kid_at_most_once_per_interval(tmp_path: Path) -> None:
    s = settings(tmp_path)
    signer_ring = KeyRing(s.data_dir / "jwt-signing-key.pem", None)
    s.jwt_public_key_file.write_bytes(  # type: ignore[union-attr]
        format_ring(signer_ring.keys_in_order(), private=False)
    )
    mono = Clock(0.0)
    ring = KeyRing(None, s.jwt_public_key_file, monotonic=mono)
    verifier = TokenVerifier(ring, "imagegate", "imagegate", 60, cache_size=0)
    t0 = time.time()
    new_kid = rotate(s, now=t0 - 20)  # already signing
    signer = RingIssuer(
        KeyRing(s.data_dir / "jwt-signing-key.pem", None), "imagegate", "imagegate", 900
    )
    token = signer.issue(Identity("u1", "alice"))
    assert kid_of(token) == new_kid
    mono.now = 0.5  # the last look was half a second ago: not again yet
    with pytest.raises(InvalidToken):
        verifier.verify(token)
    mono.now = 1.0
    assert verifier.verify(token).user_id == "u1"
    assert new_kid in {k["kid"] for k in verifier.jwks()["keys"]}
    # Garbage kids cost at most one stat per interval and change nothing.
    forged = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "nope"})
    for _ in range(100):
        with pytest.raises(InvalidToken):
            verifier.verify(forged)


def test_retired_keys_are_dropped(tmp_path: Path) -> None:
    s = settings(tmp_path)
    t0 = time.time() - 5000
    first = rotate(s, now=t0)
    second = rotate(s, now=t0 + 100)
    path = s.data_dir / "jwt-signing-key.pem"
    kids = [k.kid for k in parse_ring(path.read_bytes(), path)]
    assert kids[:2] == [second, first] and len(kids) == 3
    # The original key retired at t0 + 10 + 900 + 120; the first one at t0 + 110 + 1020.
    third = rotate(s, now=time.time())
    kids = [k.kid for k in parse_ring(path.read_bytes(), path)]
    assert kids == [third, second]
    assert [public_jwk(k)["kid"] for k in load_public_keys(s.jwt_public_key_file)] == [  # type: ignore[arg-type]
        third,
        second,
    ]
    assert path.stat().st_mode & 0o777 == 0o600
