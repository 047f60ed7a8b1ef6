"""Access tokens: ES256 JWTs issued here, verified with an algorithm pinned and claims checked."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.security.keys import public_jwk

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "exp", "jti"]


@dataclass(frozen=True)
class Identity:
    """Who a verified credential speaks for.

    ``session_id`` is the login session (refresh-token family) an access token belongs to;
    ``scopes`` is None for a person's session (everything) and the granted scopes for an API key.
    """

    user_id: str
    login: str
    session_id: str | None = None
    issued_at: int = field(default=0, compare=False)  # the token's iat: when, not who
    scopes: frozenset[str] | None = None


class InvalidToken(Exception):
    pass


class TokenVerifier:
    """Verifies tokens against a fixed set of public keys, looked up by ``kid``.

    A verified token is remembered (bounded, until it expires): an ES256 verification costs
    about 0.2 ms of CPU, a dictionary lookup nothing, and a token's verdict cannot change before
    its expiry — only the account can go, and callers check that separately."""

    def __init__(
        self,
        public_keys: list[ec.EllipticCurvePublicKey] | Mapping[str, ec.EllipticCurvePublicKey],
        issuer: str,
        audience: str,
        leeway: int,
        cache_size: int = 10_000,
    ) -> None:
        # A KeyRing (keys.py) by kid reloads its files on an unknown kid; a list stays fixed.
        self._keys: Mapping[str, ec.EllipticCurvePublicKey] = (
            public_keys
            if isinstance(public_keys, Mapping)
            else {public_jwk(k)["kid"]: k for k in public_keys}
        )
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._cache_size = cache_size
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k) for k in self._keys.values()]}

    def verify(self, token: str) -> Identity:
        """Return the token's identity, or raise :class:`InvalidToken`."""
        cached = self._verified.get(token)
        if cached is not None:
            identity, expires = cached
            if time.time() < expires + self._leeway:
                self._verified.move_to_end(token)
                return identity
            del self._verified[token]
        identity, expires = self._verify(token)
        if self._cache_size:
            self._verified[token] = (identity, expires)
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return identity

    def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
            # kid is attacker-controlled: it only selects among our own keys.
            key = self._keys.get(str(header.get("kid")))
            if key is None:
                raise InvalidToken("unknown signing key")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        login = claims.get("login")
        if not isinstance(claims["sub"], str) or not isinstance(login, str):
            raise InvalidToken("malformed subject")
        sid = claims.get("sid")
        if sid is not None and not isinstance(sid, str):
            raise InvalidToken("malformed session id")
        identity = Identity(claims["sub"], login, session_id=sid, issued_at=int(claims["iat"]))
        return identity, float(claims["exp"])


class TokenIssuer:
    """Signs access tokens with the one private key."""

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, issuer: str, audience: str, ttl: int
    ) -> None:
        self._key = private_key
        self._kid = public_jwk(private_key.public_key())["kid"]
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl

    def issue(self, identity: Identity) -> str:
        """A signed access token for ``identity``; its session id travels as ``sid``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": identity.user_id,
            "login": identity.login,
            "iat": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        if identity.session_id is not None:
            claims["sid"] = identity.session_id
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
