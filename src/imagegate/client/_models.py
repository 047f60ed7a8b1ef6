"""What the API answers, as plain typed records (dataclasses: no pydantic, so that importing the
client stays fast for the command line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _str(d: dict[str, Any], key: str, default: str = "") -> str:
    value = d.get(key, default)
    return default if value is None else str(value)


def _int(d: dict[str, Any], key: str) -> int:
    value = d.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class Image:
    """One stored image, as the upload and the listing describe it."""

    filename: str
    url: str
    content_type: str
    width: int
    height: int
    frames: int
    bytes: int
    sha256: str
    visibility: str
    created_at: str
    variants: dict[str, str] = field(default_factory=dict)
    srcset: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Image:
        """The record from the server's JSON."""
        variants = d.get("variants")
        return cls(
            filename=_str(d, "filename"),
            url=_str(d, "url"),
            content_type=_str(d, "content_type"),
            width=_int(d, "width"),
            height=_int(d, "height"),
            frames=_int(d, "frames"),
            bytes=_int(d, "bytes"),
            sha256=_str(d, "sha256"),
            visibility=_str(d, "visibility", "public"),
            created_at=_str(d, "created_at"),
            variants={str(k): str(v) for k, v in variants.items()}
            if isinstance(variants, dict)
            else {},
            srcset=_str(d, "srcset"),
        )


@dataclass(frozen=True)
class Upload:
    """An upload's answer: ``created`` is False when the server already had these bytes from
    this account (200 with the existing image instead of 201)."""

    image: Image
    created: bool


@dataclass(frozen=True)
class Page:
    """One page of the caller's images, newest first; ``next_cursor`` is None on the last."""

    items: list[Image]
    next_cursor: str | None


@dataclass(frozen=True)
class User:
    """The caller's account."""

    id: str
    login: str
    created_at: str
    images: int
    bytes: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> User:
        """The record from the server's JSON."""
        return cls(
            id=_str(d, "id"),
            login=_str(d, "login"),
            created_at=_str(d, "created_at"),
            images=_int(d, "images"),
            bytes=_int(d, "bytes"),
        )


@dataclass(frozen=True)
class Tokens:
    """An access token, the refresh token that renews it (when the server gives one) and the
    time (``time.time()``) the access token expires at (None: not said)."""

    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class ApiKey:
    """An API key's description; ``key`` (the secret) is there only in the answer that created
    it."""

    id: str
    name: str
    scopes: tuple[str, ...]
    prefix: str = ""
    created_at: str = ""
    expires_at: str | None = None
    last_used_at: str | None = None
    key: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        """The record from the server's JSON."""
        scopes = d.get("scopes")
        expires, used, key = d.get("expires_at"), d.get("last_used_at"), d.get("key")
        return cls(
            id=_str(d, "id"),
            name=_str(d, "name"),
            scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list) else (),
            prefix=_str(d, "prefix"),
            created_at=_str(d, "created_at"),
            expires_at=None if expires is None else str(expires),
            last_used_at=None if used is None else str(used),
            key=None if key is None else str(key),
        )
