"""What the sync and async clients share: errors, Retry-After, answers to records."""

from __future__ import annotations

import email.utils
import json
import math
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate import __version__
from imagegate.client._models import ApiKey, Image, Page, Tokens, Upload, User

USER_AGENT = f"imagegate-client/{__version__}"
CHUNK = 256 * 1024
# Statuses that mean "not now": the server says when to come back (Retry-After).
RETRYABLE = frozenset({429, 503})


class ClientError(Exception):
    """Anything the client could not do."""


class ApiError(ClientError):
    """The server answered with an error: its status, its JSON ``error`` message, and how many
    seconds it asked to wait (``Retry-After``) when it said so."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class TransportError(ClientError):
    """No answer: the server could not be reached, or the connection broke."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110
    10.2.3); None when absent or unreadable. Never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from(response: httpx.Response) -> ApiError:
    """The ApiError for an error answer (its body must have been read)."""
    message = ""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
    else:
        text = response.content[:200].decode("utf-8", "replace").strip()
        message = text if text and "<" not in text[:1] else response.reason_phrase
    return ApiError(
        response.status_code,
        message or "error",
        parse_retry_after(response.headers.get("retry-after")),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How 429 and 503 answers are retried: at most ``max_retries`` times per request, each
    after the server's Retry-After (``default_wait`` times 2^attempt when it gave none); an answer
    asking for more than ``max_wait`` seconds is not waited for but raised."""

    max_retries: int = 5
    max_wait: float = 60.0
    default_wait: float = 1.0

    def wait(self, attempt: int, error: ApiError) -> float | None:
        """Seconds to wait before trying again after ``error``, or None to give up."""
        if error.status not in RETRYABLE or attempt >= self.max_retries:
            return None
        delay = error.retry_after
        if delay is None:
            delay = self.default_wait * (2**attempt)
        if not math.isfinite(delay) or delay > self.max_wait:
            return None
        return delay


def tokens_from(response: httpx.Response, previous_refresh: str | None = None) -> Tokens:
    """The tokens of a login or refresh answer (JSON ``{access_token, refresh_token?,
    expires_in?}``)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise ClientError("the server's token answer has no access_token")
    expires_in = body.get("expires_in")
    refresh = body.get("refresh_token")
    return Tokens(
        access_token=body["access_token"],
        refresh_token=refresh if isinstance(refresh, str) else previous_refresh,
        expires_at=time.time() + expires_in if isinstance(expires_in, int | float) else None,
    )


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or ClientError."""
    try:
        body = response.json()
    except ValueError:
        raise ClientError(f"the server's answer is not JSON ({response.status_code})") from None
    if not isinstance(body, dict):
        raise ClientError("the server's answer is not a JSON object")
    return body


def upload_from(response: httpx.Response) -> Upload:
    """201: stored now; 200: the same bytes were already this account's image."""
    return Upload(Image.from_json(json_object(response)), created=response.status_code == 201)


def page_from(response: httpx.Response) -> Page:
    """A page of the listing."""
    body = json_object(response)
    items = body.get("items")
    cursor = body.get("next_cursor")
    return Page(
        [Image.from_json(i) for i in items if isinstance(i, dict)]
        if isinstance(items, list)
        else [],
        cursor if isinstance(cursor, str) and cursor else None,
    )


def keys_from(response: httpx.Response) -> list[ApiKey]:
    """The key listing: ``{items: [...]}`` or a bare list."""
    body = response.json()
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ClientError("the server's key listing is not a list")
    return [ApiKey.from_json(i) for i in items if isinstance(i, dict)]


def user_from(response: httpx.Response) -> User:
    """The caller's account."""
    return User.from_json(json_object(response))


def key_from(response: httpx.Response) -> ApiKey:
    """A created key, with its secret."""
    return ApiKey.from_json(json_object(response))


def check_name(name: str) -> str:
    """An image name as one path segment, or ClientError."""
    if not name or "/" in name or "?" in name or "#" in name or name in {".", ".."}:
        raise ClientError(f"not an image name: {name!r}")
    return name


def image_path(name: str, *, public: bool) -> str:
    """The route that serves an image by name: the owner's, or the anonymous public one."""
    return ("/images/" if public else "/v1/user/") + check_name(name)


def base_url(url: str) -> str:
    """The service's address without a trailing slash; http(s) only."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"not an http(s) URL: {url!r}")
    return url


def tls_verify(url: str, verify: bool | ssl.SSLContext) -> bool | ssl.SSLContext:
    """What httpx verifies TLS with. Loading the CA certificates takes about 0.1 s, so it is
    done only for an https URL (the client follows no redirects: http stays http)."""
    return verify if url.startswith("https://") else False
