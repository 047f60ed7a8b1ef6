"""The asynchronous client (``imagegate.client.AsyncClient``): the same API as ``Client``,
with ``await``; safe to share between tasks of one event loop."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from imagegate.client._core import (
    CHUNK,
    USER_AGENT,
    ClientError,
    RetryPolicy,
    TransportError,
    base_url,
    check_name,
    error_from,
    image_path,
    key_from,
    keys_from,
    page_from,
    tls_verify,
    tokens_from,
    upload_from,
    user_from,
)
from imagegate.client._models import ApiKey, Image, Page, Tokens, Upload, User
from imagegate.client._sync import EARLY_REFRESH_SECONDS, Progress, upload_body


async def _chunks(body: Iterable[bytes]) -> AsyncIterator[bytes]:
    # Reading the next chunk of a local file blocks for far less than a network send; the
    # loop is not held noticeably, and no thread hop per chunk is paid.
    for piece in body:
        yield piece


class AsyncClient:
    """An asyncio client of an imagegate server; see ``Client`` for the behaviour."""

    def __init__(
        self,
        url: str,
        *,
        tokens: Tokens | None = None,
        api_key: str | None = None,
        on_tokens: Callable[[Tokens], None] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        verify: bool | ssl.SSLContext = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = base_url(url)
        self.retry = retry or RetryPolicy()
        self.on_tokens = on_tokens
        self._tokens = tokens
        self._api_key = api_key
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            verify=tls_verify(self.url, verify),
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens (None with an API key or before login)."""
        return self._tokens

    def absolute(self, url: str) -> str:
        """An absolute URL for one the server gave relative (``/images/…``)."""
        return url if "://" in url else self.url + url

    async def _credential(self) -> str | None:
        if self._api_key:
            return self._api_key
        tokens = self._tokens
        if tokens is None:
            return None
        if (
            tokens.refresh_token
            and tokens.expires_at is not None
            and time.time() > tokens.expires_at - EARLY_REFRESH_SECONDS
        ):
            await self._refresh_if_current(tokens.access_token)
            tokens = self._tokens or tokens
        return tokens.access_token

    async def _refresh_if_current(self, used: str) -> None:
        async with self._lock:
            if self._tokens is not None and self._tokens.access_token == used:
                await self._refresh_locked()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        body: Callable[[], Iterable[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        attempt, refreshed = 0, False
        while True:
            sent_headers = dict(headers or {})
            credential = await self._credential() if auth else None
            if credential:
                sent_headers["Authorization"] = f"Bearer {credential}"
            request = self._http.build_request(
                method,
                path,
                headers=sent_headers,
                params=params,
                json=json,
                content=_chunks(body()) if body is not None else None,
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise TransportError(
                    f"{method} {self.url}{path}: {exc or type(exc).__name__}"
                ) from exc
            if response.is_success:
                return response
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise TransportError(f"{method} {self.url}{path}: {exc}") from exc
            finally:
                await response.aclose()
            error = error_from(response)
            if (
                error.status == 401
                and credential is not None
                and not refreshed
                and not self._api_key
                and self._tokens is not None
                and self._tokens.refresh_token
            ):
                refreshed = True
                await self._refresh_if_current(credential)
                continue
            wait = self.retry.wait(attempt, error) if retry else None
            if wait is None:
                raise error
            attempt += 1
            await self._sleep(wait)

    def _set_tokens(self, tokens: Tokens) -> Tokens:
        self._tokens = tokens
        if self.on_tokens is not None:
            self.on_tokens(tokens)
        return tokens

    async def login(self, login: str, password: str) -> Tokens:
        """Log in: an access token, and a refresh token when the server gives one."""
        response = await self._send(
            "POST",
            "/v1/token",
            auth=False,
            json={"login": login, "password": password},
            headers={"Accept": "application/json"},
            retry=False,
        )
        self._api_key = None
        return self._set_tokens(tokens_from(response))

    async def refresh(self) -> Tokens:
        """A new access token and refresh token for the current refresh token."""
        async with self._lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> Tokens:
        current = self._tokens
        if current is None or not current.refresh_token:
            raise ClientError("no refresh token: log in again")
        response = await self._send(
            "POST",
            "/v1/token/refresh",
            auth=False,
            json={"refresh_token": current.refresh_token},
            headers={"Accept": "application/json"},
            retry=False,
        )
        return self._set_tokens(tokens_from(response))

    async def logout(self, *, everywhere: bool = False) -> None:
        """End this session (``everywhere``: every session of the account)."""
        await self._send("POST", "/v1/logout", params={"all": "true"} if everywhere else None)
        self._tokens = None

    async def whoami(self) -> User:
        """The caller's account."""
        return user_from(await self._send("GET", "/v1/user"))

    async def upload(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        visibility: str = "public",
        progress: Progress | None = None,
    ) -> Upload:
        """Send an image (bytes, or a file streamed from disk)."""
        body, headers = upload_body(source, progress)
        response = await self._send(
            "POST", "/v1/upload", body=body, headers=headers, params={"visibility": visibility}
        )
        return upload_from(response)

    async def images(self, *, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of the caller's images, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return page_from(await self._send("GET", "/v1/images", params=params))

    async def find_upload(self, sha256: str) -> Image | None:
        """The caller's image whose uploaded bytes had this sha256 (hex), if any."""
        params = {"uploaded_sha256": sha256}
        items = page_from(await self._send("GET", "/v1/images", params=params)).items
        return items[0] if items else None

    async def iter_images(self, *, page_size: int = 200) -> AsyncIterator[Image]:
        """Every image of the caller, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.images(limit=page_size, cursor=cursor)
            for image in page.items:
                yield image
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def download(self, name: str, *, public: bool = False) -> bytes:
        """An image's bytes: the owner's route (``public``: the anonymous one)."""
        response = await self._send("GET", image_path(name, public=public), auth=not public)
        return response.content

    async def download_to(
        self,
        name: str,
        out: BinaryIO,
        *,
        public: bool = False,
        progress: Progress | None = None,
    ) -> int:
        """Stream an image into ``out``; the number of bytes written."""
        response = await self._send(
            "GET", image_path(name, public=public), auth=not public, stream=True
        )
        written = 0
        try:
            async for piece in response.aiter_bytes(CHUNK):
                out.write(piece)
                written += len(piece)
                if progress is not None:
                    progress(written)
        except httpx.HTTPError as exc:
            raise TransportError(f"GET {name}: {exc}") from exc
        finally:
            await response.aclose()
        return written

    async def delete(self, name: str) -> None:
        """Delete one of the caller's images."""
        await self._send("DELETE", "/v1/images/" + check_name(name))

    async def create_key(
        self, name: str, scopes: Iterable[str], *, expires_in_days: int | None = None
    ) -> ApiKey:
        """A new API key; its secret (``.key``) is shown only in this answer."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return key_from(await self._send("POST", "/v1/keys", json=body))

    async def list_keys(self) -> list[ApiKey]:
        """The account's API keys, never their secrets."""
        return keys_from(await self._send("GET", "/v1/keys"))

    async def revoke_key(self, key_id: str) -> None:
        """Revoke an API key at once."""
        await self._send("DELETE", "/v1/keys/" + check_name(key_id))
