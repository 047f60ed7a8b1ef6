"""Token validation for a gateway's auth_request: never a 2xx for a bad token."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.conftest import Account

SEED_HS256_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ."
    "hiMVLmssoTsy1MqbmIoviDeFPvo-nCd92d4UFiN2O2I"
)


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _forged_none_token(user_id: str) -> str:
    return _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": user_id, "login": "x"}) + "."


def test_validation_accepts_a_valid_token_with_identity_headers(
    client: httpx.Client, account: Account
) -> None:
    r = client.get("/v1/token/validation", headers=account.auth)
    assert r.status_code == 200
    assert r.headers["X-User-Id"] == account.id
    assert r.headers["X-User-Login"] == account.login


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "BEARER garbage",
        "Basic Ym9iOnF3ZTEyMw==",
        f"Bearer {SEED_HS256_TOKEN}",
        "Bearer not.a.jwt",
        "Bearer " + "a" * 5000,
    ],
)
def test_validation_rejects_bad_tokens_with_401(
    client: httpx.Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = client.get("/v1/token/validation", headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["error"]


def test_validation_rejects_alg_none_and_tampered_tokens(
    client: httpx.Client, account: Account
) -> None:
    assert (
        client.get(
            "/v1/token/validation",
            headers={"Authorization": f"Bearer {_forged_none_token(account.id)}"},
        ).status_code
        == 401
    )
    header, payload, signature = account.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    tampered = f"{header}.{_b64(claims)}.{signature}"
    assert (
        client.get(
            "/v1/token/validation", headers={"Authorization": f"Bearer {tampered}"}
        ).status_code
        == 401
    )


def test_seed_hs256_token_is_rejected_everywhere(client: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {SEED_HS256_TOKEN}"}
    assert client.get("/v1/user", headers=auth).status_code == 401
    assert client.post("/v1/upload", headers=auth, content=b"x").status_code == 401
    assert client.get("/v1/images", headers=auth).status_code == 401


def test_token_claims(account: Account) -> None:
    header, payload, _ = account.token.split(".")
    head = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert head["alg"] == "ES256"
    assert {"iss", "aud", "sub", "login", "iat", "exp", "jti"} <= set(claims)
    assert claims["sub"] == account.id
    assert claims["exp"] - claims["iat"] == 900


def test_jwks_publishes_the_signing_key(client: httpx.Client, account: Account) -> None:
    jwks = client.get("/.well-known/jwks.json").json()
    header = account.token.split(".")[0]
    kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    keys = {k["kid"]: k for k in jwks["keys"]}
    assert keys[kid]["kty"] == "EC"
    assert keys[kid]["crv"] == "P-256"
    assert "d" not in keys[kid]
