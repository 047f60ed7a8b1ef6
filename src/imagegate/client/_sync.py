"""The synchronous client (``imagegate.client.Client``); thread-safe: one client may serve
several threads, as ``imagegate push --jobs N`` does."""

from __future__ import annotations

import os
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from imagegate.client._core import (
    CHUNK,
    USER_AGENT,
    ApiError,
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

Progress = Callable[[int], None]
# An access token this close to its expiry is renewed before use rather than sent to be refused.
EARLY_REFRESH_SECONDS = 30.0


def _memory_chunks(data: bytes, progress: Progress | None) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        piece = data[start : start + CHUNK]
        yield piece
        if progress is not None:
            progress(start + len(piece))


def _file_chunks(path: Path, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    with open(path, "rb") as f:
        while piece := f.read(CHUNK):
            yield piece
            sent += len(piece)
            if progress is not None:
                progress(sent)


def upload_body(
    source: bytes | str | os.PathLike[str], progress: Progress | None
) -> tuple[Callable[[], Iterable[bytes]], dict[str, str]]:
    """A factory of the body (called again for a retry) and its headers. A regular file or
    bytes are sent with their Content-Length; a pipe is sent once, chunked."""
    headers = {"Content-Type": "application/octet-stream"}
    if isinstance(source, bytes):
        headers["Content-Length"] = str(len(source))
        return (lambda: _memory_chunks(source, progress)), headers
    path = Path(source)
    info = path.stat()
    if stat.S_ISREG(info.st_mode):
        headers["Content-Length"] = str(info.st_size)
        return (lambda: _file_chunks(path, progress)), headers
    sent = False

    def once() -> Iterable[bytes]:
        nonlocal sent
        if sent:
            raise ClientError(f"{path} is not a regular file: it cannot be sent again")
        sent = True
        return _file_chunks(path, progress)

    return once, headers


class Client:
    """A client of an imagegate server.

    Authenticate with ``login()``, or pass ``tokens`` from an earlier login, or an ``api_key``.
    With a refresh token, an expired access token is renewed on its own (a 401 is retried once
    after a refresh) and ``on_tokens`` is called with every new pair, to keep them. 429 and 503
    answers are retried after their Retry-After (see ``RetryPolicy``). Errors are ``ApiError``
    (the server's status, message and Retry-After) or ``TransportError`` (no answer).
    """

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
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = base_url(url)
        self.retry = retry or RetryPolicy()
        self.on_tokens = on_tokens
        self._tokens = tokens
        self._api_key = api_key
        self._sleep = sleep
        self._lock = threading.RLock()
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            verify=tls_verify(self.url, verify),
            headers={"User-Agent": USER_AGENT},
        )

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens (None with an API key or before login)."""
        return self._tokens

    def absolute(self, url: str) -> str:
        """An absolute URL for one the server gave relative (``/images/…``)."""
        return url if "://" in url else self.url + url

    # -- sending ---------------------------------------------------------------------------

    def _credential(self) -> str | None:
        """The Bearer credential to send; renews an access token about to expire."""
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
            self._refresh_if_current(tokens.access_token)
            tokens = self._tokens or tokens
        return tokens.access_token

    def _refresh_if_current(self, used: str) -> None:
        """Refresh, unless another thread already did since ``used`` was sent."""
        with self._lock:
            if self._tokens is not None and self._tokens.access_token == used:
                self.refresh()

    def _send(
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
            credential = self._credential() if auth else None
            if credential:
                sent_headers["Authorization"] = f"Bearer {credential}"
            request = self._http.build_request(
                method,
                path,
                headers=sent_headers,
                params=params,
                json=json,
                content=body() if body is not None else None,
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise TransportError(
                    f"{method} {self.url}{path}: {exc or type(exc).__name__}"
                ) from exc
            if response.is_success:
                return response
            try:
                response.read()
            except httpx.HTTPError as exc:
                raise TransportError(f"{method} {self.url}{path}: {exc}") from exc
            finally:
                response.close()
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
                self._refresh_if_current(credential)
                continue
            wait = self.retry.wait(attempt, error) if retry else None
            if wait is None:
                raise error
            attempt += 1
            self._sleep(wait)

    def _set_tokens(self, tokens: Tokens) -> Tokens:
        self._tokens = tokens
        if self.on_tokens is not None:
            self.on_tokens(tokens)
        return tokens

    # -- sessions --------------------------------------------------------------------------

    def login(self, login: str, password: str) -> Tokens:
        """Log in: an access token, and a refresh token when the server gives one."""
        response = self._send(
            "POST",
            "/v1/token",
            auth=False,
            json={"login": login, "password": password},
            headers={"Accept": "application/json"},
            retry=False,  # a throttled login is the person's to retry, not a loop's
        )
        self._api_key = None
        return self._set_tokens(tokens_from(response))

    def refresh(self) -> Tokens:
        """A new access token and refresh token for the current refresh token (which the
        server then no longer accepts)."""
        with self._lock:
            current = self._tokens
            if current is None or not current.refresh_token:
                raise ClientError("no refresh token: log in again")
            response = self._send(
                "POST",
                "/v1/token/refresh",
                auth=False,
                json={"refresh_token": current.refresh_token},
                headers={"Accept": "application/json"},
                retry=False,
            )
            return self._set_tokens(tokens_from(response))

    def logout(self, *, everywhere: bool = False) -> None:
        """End this session (``everywhere``: every session of the account)."""
        self._send("POST", "/v1/logout", params={"all": "true"} if everywhere else None)
        self._tokens = None

    def whoami(self) -> User:
        """The caller's account."""
        return user_from(self._send("GET", "/v1/user"))

    # -- images ----------------------------------------------------------------------------

    def upload(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        visibility: str = "public",
        progress: Progress | None = None,
    ) -> Upload:
        """Send an image (bytes, or a file streamed from disk). ``progress`` is called with
        the bytes sent so far (from 0 again if the upload is retried)."""
        body, headers = upload_body(source, progress)
        response = self._send(
            "POST", "/v1/upload", body=body, headers=headers, params={"visibility": visibility}
        )
        return upload_from(response)

    def images(self, *, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of the caller's images, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return page_from(self._send("GET", "/v1/images", params=params))

    def find_upload(self, sha256: str) -> Image | None:
        """The caller's image whose uploaded bytes had this sha256 (hex), if any: a file sent
        before need not be sent again."""
        params = {"uploaded_sha256": sha256}
        items = page_from(self._send("GET", "/v1/images", params=params)).items
        return items[0] if items else None

    def iter_images(self, *, page_size: int = 200) -> Iterator[Image]:
        """Every image of the caller, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.images(limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def download(self, name: str, *, public: bool = False) -> bytes:
        """An image's bytes: the owner's route (``public``: the anonymous one)."""
        return self._send("GET", image_path(name, public=public), auth=not public).content

    def download_to(
        self,
        name: str,
        out: BinaryIO,
        *,
        public: bool = False,
        progress: Progress | None = None,
    ) -> int:
        """Stream an image into ``out``; the number of bytes written."""
        response = self._send("GET", image_path(name, public=public), auth=not public, stream=True)
        written = 0
        try:
            for piece in response.iter_bytes(CHUNK):
                out.write(piece)
                written += len(piece)
                if progress is not None:
                    progress(written)
        except httpx.HTTPError as exc:
            raise TransportError(f"GET {name}: {exc}") from exc
        finally:
            response.close()
        return written

    def delete(self, name: str) -> None:
        """Delete one of the caller's images."""
        self._send("DELETE", "/v1/images/" + check_name(name))

    # -- API keys --------------------------------------------------------------------------

    def create_key(
        self, name: str, scopes: Iterable[str], *, expires_in_days: int | None = None
    ) -> ApiKey:
        """A new API key; its secret (``.key``) is shown only in this answer."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return key_from(self._send("POST", "/v1/keys", json=body))

    def list_keys(self) -> list[ApiKey]:
        """The account's API keys, never their secrets."""
        return keys_from(self._send("GET", "/v1/keys"))

    def revoke_key(self, key_id: str) -> None:
        """Revoke an API key at once."""
        self._send("DELETE", "/v1/keys/" + check_name(key_id))


__all__ = ["ApiError", "Client", "upload_body"]
