"""Error types with their HTTP status, turned into ``{"error": message}`` in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("imagegate")


class AppError(Exception):
    """An expected failure the client should hear about, with its status code."""

    status = 400

    def __init__(
        self, message: str, *, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})


class BadRequest(AppError):
    status = 400


class Unauthorized(AppError):
    status = 401

    def __init__(self, message: str = "missing or invalid bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="imagegate"'})


class Forbidden(AppError):
    status = 403


class NotFound(AppError):
    status = 404

    def __init__(self, message: str = "not found") -> None:
        super().__init__(message)


class Conflict(AppError):
    status = 409


class PayloadTooLarge(AppError):
    status = 413


class RequestTimeout(AppError):
    status = 408


class UnsupportedMediaType(AppError):
    status = 415


class Unprocessable(AppError):
    status = 422


class TooManyRequests(AppError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class HeadersTooLarge(AppError):
    status = 431


class InsufficientStorage(AppError):
    status = 507

    def __init__(self, message: str = "the server is out of disk space; try again later") -> None:
        super().__init__(message, headers={"Retry-After": "60"})


class ClientClosed(AppError):
    """The client went away before the answer (NGINX's 499): nobody reads it, the access log
    and the upload metrics do."""

    status = 499


class Unavailable(AppError):
    status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid or expired bearer token, or wrong credentials",
    403: "Not allowed (e.g. a custom size without a valid signature)",
    404: "No such resource (or not yours)",
    409: "Conflict",
    408: "The request body stalled",
    413: "Body over the size limit",
    415: "Not an accepted image type",
    416: "Range not satisfiable (Content-Range gives the size)",
    422: "Invalid input",
    429: "Too many failed logins; see Retry-After",
    431: "Request headers too large or too many",
    503: "Temporarily unavailable; see Retry-After",
    507: "The server is out of disk space",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error this service sends."""
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception type to a JSON ``{"error"}`` body with the right status."""

    async def app_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        return error_response(exc.status, exc.message, exc.headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, _describe_validation(exc))

    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return error_response(
            503, "the database is unavailable; try again later", {"Retry-After": "5"}
        )

    async def too_deep(request: Request, exc: Exception) -> JSONResponse:
        # A parser recursing on hostile nesting (the routes that parse JSON themselves check
        # depth first, with imagegate.jsonbody): the input's fault, so one line, no traceback.
        log.warning("input nested too deeply on %s %s", request.method, request.url.path)
        return error_response(400, "input is nested too deeply")

    async def bad_unicode(request: Request, exc: Exception) -> JSONResponse:
        # Text that is not valid Unicode (a lone surrogate from a JSON escape) reaching an
        # encoder: the input's fault. imagegate.jsonbody rejects it at parsing where it can.
        reason = getattr(exc, "reason", type(exc).__name__)  # never the text itself
        log.warning("invalid Unicode on %s %s: %s", request.method, request.url.path, reason)
        return error_response(400, "input is not valid Unicode text")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error")

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    # asyncpg raises a plain ConnectionError when it cannot connect at all.
    db_errors = (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.TimeoutError,
        ConnectionError,
    )
    for db_error in db_errors:
        app.add_exception_handler(db_error, database_down)
    app.add_exception_handler(RecursionError, too_deep)
    app.add_exception_handler(UnicodeError, bad_unicode)
    app.add_exception_handler(Exception, unexpected)
