"""Webhook secrets and signatures: what receivers verify with a Standard Webhooks library
succeeds for what we send, and fails for anything altered."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from imagegate.webhooks import signing

BODY = b'{"specversion":"1.0","id":"e1","type":"imagegate.image.stored","data":{"n":"\xc3\xa9"}}'


def test_secrets_are_whsec_and_32_random_bytes() -> None:
    secrets = {signing.new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 32


def test_a_signed_delivery_verifies_with_the_secret() -> None:
    secret = signing.new_secret()
    now = int(time.time())
    headers = signing.signed_headers(secret, "e1", BODY, now)
    assert headers["webhook-id"] == "e1"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert "imagegate" in headers["user-agent"]
    assert Webhook(secret).verify(BODY, headers)["id"] == "e1"


@pytest.mark.parametrize(
    "tamper",
    [
        "body",
        "id",
        "timestamp",
        "secret",
        "stale",
    ],
)
def test_verification_fails_for_anything_altered(tamper: str) -> None:
    secret = signing.new_secret()
    now = int(time.time())
    body, headers = BODY, signing.signed_headers(secret, "e1", BODY, now)
    if tamper == "body":
        body = BODY.replace(b"stored", b"deleted")
    elif tamper == "id":
        headers["webhook-id"] = "e2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now + 1)
    elif tamper == "secret":
        secret = signing.new_secret()
    elif tamper == "stale":  # a replay of a delivery signed long ago
        headers = signing.signed_headers(secret, "e1", BODY, now - 3600)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)
