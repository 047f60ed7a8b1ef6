"""The production topology (deploy/local/stack): brought up once for these tests."""

from __future__ import annotations

import importlib.util
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

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

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.http, timeout=60, **kwargs)

    def run(self, action: str, name: str | None = None, *extra: str) -> None:
        cmd = [*STACK, action, *([name] if name else []), *extra]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)

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
    was_up = subprocess.run([*STACK, "status"], capture_output=True).returncode == 0
    if not was_up:
        up = subprocess.run([*STACK, "up", "--demo"], capture_output=True, text=True, timeout=3000)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    urls = json.loads(
        subprocess.run([*STACK, "urls"], capture_output=True, text=True, check=True).stdout
    )
    s = Stack(urls)
    s.wait_healthy()
    yield s
    if not was_up:
        subprocess.run([*STACK, "down"], capture_output=True, timeout=300)
