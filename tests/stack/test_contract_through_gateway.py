"""The contract suite, unchanged, through NGINX over HTTP and over HTTPS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.stack.conftest import ROOT, Stack


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_contract_suite_passes_through_the_gateway(stack: Stack, scheme: str) -> None:
    env = {**os.environ, "IMAGEGATE_BASE_URL": stack.urls[scheme]}
    if scheme == "https":
        env["IMAGEGATE_CA_BUNDLE"] = stack.urls["ca_bundle"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/contract", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-8000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
