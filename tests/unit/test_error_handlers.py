"""The safety nets for input that reaches a parser or encoder: 400 in the error shape."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from imagegate.errors import install_error_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/deep")
    async def deep() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    @app.get("/surrogate")
    async def surrogate() -> None:
        "\ud800".encode()

    return app


@pytest.mark.parametrize(("path", "message"), [("/deep", "nested"), ("/surrogate", "Unicode")])
def test_input_errors_are_400(path: str, message: str, caplog: pytest.LogCaptureFixture) -> None:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())  # in process: no sockets
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get(path)

    r = asyncio.run(get())
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert not any(rec.exc_info for rec in caplog.records)  # one line, no traceback
