"""Operational routes every role serves: status, health, metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from imagegate.deps import RuntimeDep

router = APIRouter(tags=["operations"])
log = logging.getLogger("imagegate")


@router.get("/status", summary='Liveness: always {"status": "OK"}, as in the reference design')
async def status() -> dict[str, str]:
    return {"status": "OK"}


@router.get(
    "/healthz",
    summary="Readiness: touches the database and the storage; reports events (never 503)",
    description="200 when the database and (uploader) the storage answer and the codec "
    'workers have started, else 503 (`checks.codec` is "starting" for the first moments after '
    "a start). "
    '`checks.events` is "ok", or "degraded" when events are late (the oldest unpublished '
    "event is over a minute old, or the broker is unreachable): the API still works and "
    'every event waits in the outbox, so "degraded" never makes the answer 503; `status` '
    'then says "degraded".',
)
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready", never a crash
        log.warning("health: database: %s", exc)
        checks["database"] = "unavailable"
    if "uploader" in runtime.roles:
        try:
            await runtime.storage.health()
            checks["storage"] = "ok"
        except Exception as exc:
            log.warning("health: storage: %s", exc)
            checks["storage"] = "unavailable"
        # The codec workers start in the background (runtime.py): not ready before them.
        checks["codec"] = runtime.codec.health if runtime.codec is not None else "starting"
    failing = [k for k, v in checks.items() if v != "ok"]
    # Without the database the outbox cannot be read: no second wait for it.
    events, reasons = await runtime.events.health(outbox=checks["database"] == "ok")
    checks["events"] = events
    status = "unavailable" if failing else events  # "ok" or "degraded"
    body: dict[str, object] = {"status": status, "checks": checks}
    if reasons:
        log.warning("health: events degraded: %s", "; ".join(reasons))
        body["events"] = reasons
    if failing:
        body["error"] = "dependencies unavailable: " + ", ".join(failing)
    healthy = not failing
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    try:
        await runtime.events.backlog()  # the outbox gauges, as of now
    except Exception as exc:  # the rest of the metrics are still worth a scrape
        log.warning("metrics: outbox unreadable: %s", exc)
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
