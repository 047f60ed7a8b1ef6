"""The HTTP server that runs an imagegate app: uvicorn, configured from settings."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from imagegate.settings import Settings


def run(app: FastAPI, settings: Settings, ssl: dict[str, Any]) -> None:
    """Serve ``app`` on the settings' host and port until SIGTERM/SIGINT (graceful)."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        **ssl,
    )
