#!/usr/bin/env python3
"""Helm for the chart's checks: built once from its Go module, cached in ~/.cache/imagegate/bin.

    python3 deploy/helm/helm.py                 # build if needed, print the binary's path
    python3 deploy/helm/helm.py lint deploy/helm/imagegate   # run helm with these arguments

Like deploy/local/stack's MinIO: `go install` of a pinned version, so nothing but the Go module
proxy is needed, once; the tests (tests/helm) call ensure_helm() themselves.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.19.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagegate"
HELM_BIN = CACHE / "bin" / f"helm-{HELM_VERSION}"
# What `helm version` reports; the release Makefile sets it the same way.
LDFLAGS = f"-s -w -X {HELM_MODULE}/internal/version.version={HELM_VERSION}"


def ensure_helm() -> Path:
    """The cached Helm binary, built from its Go module on the first call (a few minutes)."""
    if HELM_BIN.exists():
        return HELM_BIN
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"Go is needed to build Helm {HELM_VERSION} (go install), once")
    HELM_BIN.parent.mkdir(parents=True, exist_ok=True)
    # Two test processes on a fresh machine: one builds, the other waits for it.
    with open(HELM_BIN.parent / f".helm-{HELM_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if HELM_BIN.exists():
            return HELM_BIN
        print(f"building Helm {HELM_VERSION} from its Go module (once)", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=CACHE) as gobin:
            subprocess.run(
                [go, "install", f"-ldflags={LDFLAGS}", f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"],
                env={**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0"},
                check=True,
            )
            # Renamed into place whole: a half-written binary is never taken for the cache.
            os.replace(Path(gobin) / "helm", HELM_BIN)
    return HELM_BIN


def main() -> None:
    helm = ensure_helm()
    if len(sys.argv) == 1:
        print(helm)
        return
    sys.exit(subprocess.run([str(helm), *sys.argv[1:]], check=False).returncode)


if __name__ == "__main__":
    main()
