from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.security.keys import load_or_create_signing_key, public_jwk
from imagegate.security.tokens import Identity, InvalidToken, TokenIssuer, TokenVerifier


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "imagegate",
        "aud": "imagegate",
        "sub": "u1",
        "login": "a",
        "jti": "j",
        "iat": now,
        "exp": now + 60,
    }
    return {**base, **overrides}


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pair(key: ec.EllipticCurvePrivateKey, ttl: int = 900) -> tuple[TokenIssuer, TokenVerifier]:
    return (
        TokenIssuer(key, "imagegate", "imagegate", ttl),
        TokenVerifier([key.public_key()], "imagegate", "imagegate", leeway=60),
    )


def test_issued_token_verifies(key: ec.EllipticCurvePrivateKey) -> None:
    issuer, verifier = pair(key)
    assert verifier.verify(issuer.issue(Identity("u1", "alice"))) == Identity("u1", "alice")


def test_expired_token_is_rejected_after_the_leeway(key: ec.EllipticCurvePrivateKey) -> None:
    kid = public_jwk(key.public_key())["kid"]
    now = int(time.time())
    expired = claims(iat=now - 1000, exp=now - 61)
    token = jwt.encode(expired, key, algorithm="ES256", headers={"kid": kid})
    with pytest.raises(InvalidToken, match="expired"):
        pair(key)[1].verify(token)
    within_leeway = claims(iat=now - 1000, exp=now - 30)
    pair(key)[1].verify(jwt.encode(within_leeway, key, algorithm="ES256", headers={"kid": kid}))


@pytest.mark.parametrize(("claim", "value"), [("iss", "evil"), ("aud", "other-service")])
def test_wrong_issuer_or_audience_is_rejected(
    key: ec.EllipticCurvePrivateKey, claim: str, value: str
) -> None:
    kid = public_jwk(key.public_key())["kid"]
    with pytest.raises(InvalidToken):
        pair(key)[1].verify(
            jwt.encode(claims(**{claim: value}), key, algorithm="ES256", headers={"kid": kid})
        )


def test_missing_claims_are_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    kid = public_jwk(key.public_key())["kid"]
    token = jwt.encode({"sub": "u1", "login": "a"}, key, algorithm="ES256", headers={"kid": kid})
    with pytest.raises(InvalidToken):
        pair(key)[1].verify(token)


def test_hmac_with_the_public_key_as_secret_is_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    """The classic algorithm-confusion attack: HS256 keyed with the published public key."""
    kid = public_jwk(key.public_key())["kid"]
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken):
        pair(key)[1].verify(f"{head}.{body}.{sig}")


def test_token_from_another_key_is_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    token = pair(other)[0].issue(Identity("u1", "a"))
    with pytest.raises(InvalidToken, match="unknown signing key"):
        pair(key)[1].verify(token)


def test_signing_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    first = load_or_create_signing_key(path)
    again = load_or_create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_jwk(first.public_key()) == public_jwk(again.public_key())


def test_remembered_tokens_still_expire(
    key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer, verifier = pair(key)
    token = issuer.issue(Identity("u1", "alice"))
    assert verifier.verify(token) == Identity("u1", "alice")  # verified, now remembered
    later = time.time() + 900 + 61
    monkeypatch.setattr("imagegate.security.tokens.time.time", lambda: later)

    def full_check(_: str) -> None:  # stands for PyJWT, whose clock we do not move here
        raise InvalidToken("Signature has expired")

    monkeypatch.setattr(verifier, "_verify", full_check)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


def test_remembered_tokens_are_bounded(key: ec.EllipticCurvePrivateKey) -> None:
    issuer = TokenIssuer(key, "imagegate", "imagegate", 900)
    verifier = TokenVerifier([key.public_key()], "imagegate", "imagegate", 60, cache_size=3)
    for i in range(10):
        verifier.verify(issuer.issue(Identity(f"u{i}", "a")))
    assert len(verifier._verified) == 3
