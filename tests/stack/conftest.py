"""The production topology (deploy/local/stack): brought up once for these tests."""

from __future__ import annotations

import importlib.util
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]


def stack_module() -> ModuleType:
    if "imagegate_stack" not in sys.modules:
        path = ROOT / "deploy/local/stack.py"
        spec = importlib.util.spec_from_file_location("imagegate_stack", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["imagegate_stack"] = module
        spec.loader.exec_module(module)
    return sys.modules["imagegate_stack"]


@dataclass
class Stack:
    urls: dict[str, str]

    @property
    def state_dir(self) -> Path:
        return Path(self.urls["state_dir"])

    @property
    def http(self) -> str:
        return self.urls["http"]

    @property
    def https(self) -> str:
        return self.urls["https"]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.urls["ca_bundle"])

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.http, **kwargs)

    def run(
        self,
        action: str,
        name: str | None = None,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """``deploy/local/stack ACTION [NAME]``; ``env`` adds variables (a component's settings)."""
        cmd = [*STACK, action, *([name] if name else []), *extra]
        full_env = {**os.environ, **env} if env else None
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=full_env)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])

    def s3(self) -> Any:
        """A boto3 S3 client with the services' own credentials."""
        env = self.env("uploader")
        return boto3.client(
            "s3",
            endpoint_url=env["IMAGEGATE_S3_ENDPOINT"],
            aws_access_key_id=env["IMAGEGATE_S3_ACCESS_KEY"],
            aws_secret_access_key=env["IMAGEGATE_S3_SECRET_KEY"],
            region_name="us-east-1",
        )

    def object_keys(self, variants: bool = False) -> set[str]:
        """Every key in the bucket (``public/…``, ``private/…``). Variants (``<uuid>.<key>.
        <ext>``, made in the background after each upload) only with ``variants``."""
        keys: set[str] = set()
        paginator = self.s3().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.urls["bucket"]):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        return keys if variants else {k for k in keys if k.count(".") < 2}

    def service_urls(self, role: str) -> list[str]:
        """Each replica of a service, directly (not through the gateway)."""
        module = stack_module()
        ports = module.UPLOADER_PORTS if role == "uploader" else module.SECURITY_PORTS
        return [f"http://127.0.0.1:{p}" for p in ports]

    def env(self, role: str) -> dict[str, str]:
        env: dict[str, str] = stack_module().service_env(role)
        return env

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.http + "/healthz", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("the stack did not become healthy")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Set-up has its own budgets (pytest's per-test timeout covers the test body only): a cold
    # `up` installs NGINX and PostgreSQL and builds MinIO.
    was_up = subprocess.run([*STACK, "status"], capture_output=True, timeout=120).returncode == 0
    if not was_up:
        up = subprocess.run([*STACK, "up", "--demo"], capture_output=True, text=True, timeout=3000)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    urls = json.loads(
        subprocess.run(
            [*STACK, "urls"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    )
    s = Stack(urls)
    s.wait_healthy()
    yield s
    if not was_up:
        subprocess.run([*STACK, "down"], capture_output=True, timeout=600)


@dataclass
class KafkaAccess:
    """The stack's Kafka cluster as its users see it (deploy/local/kafka.py)."""

    module: ModuleType  # deploy/local/kafka.py: NODES, TOPICS, USERS, ACLS …
    cluster: Any  # its Cluster: client_config(user), admin(), serving(node)

    @property
    def bootstrap(self) -> str:
        bootstrap: str = self.module.BOOTSTRAP
        return bootstrap

    def config(self, user: str, **extra: Any) -> dict[str, Any]:
        """confluent-kafka settings for one of the stack's users (admin, relay, worker, reader)."""
        config: dict[str, Any] = self.cluster.client_config(user, **extra)
        return config


@pytest.fixture(scope="session")
def kafka(stack: Stack) -> KafkaAccess:
    module = stack_module()
    return KafkaAccess(module.kafka, module.CLUSTER)
