"""A typed Python client for an imagegate server, synchronous (``Client``) and asynchronous
(``AsyncClient``), on httpx.

    from imagegate.client import Client

    with Client("https://images.example.org") as c:
        c.login("alice", password)
        up = c.upload("holiday.jpg", visibility="private")
        print(c.absolute(up.image.url), "new" if up.created else "already there")
"""

from typing import TYPE_CHECKING, Any

from imagegate.client._core import ApiError, ClientError, RetryPolicy, TransportError
from imagegate.client._models import ApiKey, Image, Page, Tokens, Upload, User
from imagegate.client._sync import Client

if TYPE_CHECKING:
    from imagegate.client._async import AsyncClient


def __getattr__(name: str) -> Any:
    # AsyncClient brings asyncio (about 60 ms of imports): loaded when first used, so that the
    # command line, which is synchronous, starts faster.
    if name == "AsyncClient":
        from imagegate.client._async import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApiError",
    "ApiKey",
    "AsyncClient",
    "Client",
    "ClientError",
    "Image",
    "Page",
    "RetryPolicy",
    "Tokens",
    "TransportError",
    "Upload",
    "User",
]
