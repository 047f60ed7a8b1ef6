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


@router.get("/healthz", summary="Readiness: touches the database and the storage")
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
    healthy = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    if not healthy:
        body["error"] = "dependencies unavailable: " + ", ".join(
            k for k, v in checks.items() if v != "ok"
        )
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
