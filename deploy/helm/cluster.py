#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, for installing the chart the way a cluster would.

    python3 deploy/helm/cluster.py            # build the binaries if needed, print their paths
    python3 deploy/helm/cluster.py up         # start etcd, kube-apiserver, kube-controller-manager;
                                              # print the kubeconfig's path; Ctrl-C stops them

etcd, kube-apiserver, kube-controller-manager and kubectl are built once from their Go modules
(like helm.py: nothing but the Go module proxy, once) and cached in ~/.cache/imagegate/bin.
k8s.io/kubernetes cannot be `go install`ed at a version (its go.mod replaces the k8s.io/*
modules with ./staging), so a small wrapper module requires it and pins every staging module at
the matching v0.x release, the usual way of using it as a library.

There is no kubelet and no scheduler: Pods are admitted (PodSecurity included) and created by the
controllers, and stay Pending. Everything runs in its own process group and is stopped with it.
Standard library only: it runs before the project's venv exists (.ci/run).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KUBE_VERSION = "v1.37.2"
STAGING_VERSION = "v0.37.2"  # the k8s.io/* staging modules' tag for KUBE_VERSION
ETCD_VERSION = "v3.7.3"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagegate"
BIN = CACHE / "bin"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
# What `kubectl version` and the API's /version report (hack/lib/version.sh sets the same).
_VERSION_VARS = {
    "gitVersion": KUBE_VERSION,
    "gitMajor": KUBE_VERSION.split(".")[0].lstrip("v"),
    "gitMinor": KUBE_VERSION.split(".")[1],
    "gitTreeState": "clean",
    "buildDate": "1970-01-01T00:00:00Z",
}
KUBE_LDFLAGS = " ".join(
    ["-s", "-w"]
    + [
        f"-X {pkg}.{key}={value}"
        for key, value in _VERSION_VARS.items()
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    ]
)
ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    apiserver: Path
    controller_manager: Path
    kubectl: Path


def binaries() -> Binaries:
    """Where the cached binaries are (built or not)."""
    return Binaries(
        etcd=BIN / f"etcd-{ETCD_VERSION}",
        apiserver=BIN / f"kube-apiserver-{KUBE_VERSION}",
        controller_manager=BIN / f"kube-controller-manager-{KUBE_VERSION}",
        kubectl=BIN / f"kubectl-{KUBE_VERSION}",
    )


def _log(message: str) -> None:
    print(f"cluster.py: {message}", file=sys.stderr, flush=True)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"Go is needed to build Kubernetes {KUBE_VERSION} and etcd, once")
    return go


def _run_go(args: list[str], cwd: Path) -> None:
    # nice: a cold build takes minutes of both cores; other work on the machine goes first.
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=mod"}
    subprocess.run(["nice", "-n", "19", _go(), *args], cwd=cwd, env=env, check=True)


def _staging_modules() -> list[str]:
    """The k8s.io/* modules that k8s.io/kubernetes's own go.mod replaces with ./staging."""
    out = subprocess.run(
        [_go(), "mod", "download", "-json", f"k8s.io/kubernetes@{KUBE_VERSION}"],
        capture_output=True,
        text=True,
        check=True,
    )
    gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
    modules = []
    for line in gomod.splitlines():
        parts = line.split()
        if "=>" in parts and parts[-1].startswith("./staging/"):
            modules.append(parts[parts.index("=>") - 1])
    if not modules:
        raise RuntimeError(f"no staging modules in k8s.io/kubernetes@{KUBE_VERSION}'s go.mod")
    return modules


def _build_kubernetes(work: Path, out: Path) -> None:
    lines = [
        "module imagegate.local/kubebuild",
        "",
        "go 1.26.0",
        "",
        f"require k8s.io/kubernetes {KUBE_VERSION}",
        "",
        "tool (",
        *[f"\tk8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS],
        ")",
        "",
        "replace (",
        *[f"\t{m} => {m} {STAGING_VERSION}" for m in _staging_modules()],
        ")",
        "",
    ]
    (work / "go.mod").write_text("\n".join(lines))
    _run_go(["mod", "tidy"], work)
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS]
    _run_go(["build", "-trimpath", f"-ldflags={KUBE_LDFLAGS}", "-o", f"{out}/", *pkgs], work)


def _build_etcd(work: Path, out: Path) -> None:
    (work / "go.mod").write_text(
        f"module imagegate.local/etcdbuild\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    )
    (work / "main.go").write_text(ETCD_MAIN)
    _run_go(["mod", "tidy"], work)
    _run_go(["build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "etcd"), "."], work)


def ensure_binaries() -> Binaries:
    """The cached binaries, built from their Go modules on the first call (long: see README)."""
    bins = binaries()
    targets = {
        "etcd": bins.etcd,
        "kube-apiserver": bins.apiserver,
        "kube-controller-manager": bins.controller_manager,
        "kubectl": bins.kubectl,
    }
    if all(p.exists() for p in targets.values()):
        return bins
    BIN.mkdir(parents=True, exist_ok=True)
    # Two test processes on a fresh machine: one builds, the other waits for it.
    with open(BIN / f".kube-{KUBE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = CACHE / "build"
        build.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=build) as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            if not bins.etcd.exists():
                _log(f"building etcd {ETCD_VERSION} from its Go module (once, a few minutes)")
                started = time.monotonic()
                (Path(tmp) / "etcd").mkdir()
                _build_etcd(Path(tmp) / "etcd", out)
                os.replace(out / "etcd", bins.etcd)
                _log(f"etcd built in {time.monotonic() - started:.0f} s")
            if not all(targets[c].exists() for c in KUBE_COMMANDS):
                _log(
                    f"building {', '.join(KUBE_COMMANDS)} {KUBE_VERSION} from the Go module "
                    "k8s.io/kubernetes (once; 15-30 minutes on 2 cores)"
                )
                started = time.monotonic()
                (Path(tmp) / "kube").mkdir()
                _build_kubernetes(Path(tmp) / "kube", out)
                # Renamed into place whole: a half-written binary is never taken for the cache.
                for command in KUBE_COMMANDS:
                    os.replace(out / command, targets[command])
                _log(f"Kubernetes built in {time.monotonic() - started:.0f} s")
    return bins


# --- the control plane ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> None:
    """A CA, the API server's serving cert, client certs, the service-account key pair."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=imagegate-test-ca",
        "-days", "2", "-out", "ca.crt", cwd=d,
    )  # fmt: skip
    sans = (
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1"
    )
    certs = {
        "apiserver": ("/CN=kube-apiserver", sans, "serverAuth"),
        # system:masters: the administrator (the tests, helm, kubectl).
        "admin": ("/O=system:masters/CN=imagegate-test-admin", None, "clientAuth"),
        # The controller manager's own identity, with the RBAC role the API server bootstraps.
        "controller-manager": ("/CN=system:kube-controller-manager", None, "clientAuth"),
    }
    for name, (subject, san, usage) in certs.items():
        _openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d
        )
        _openssl(
            "req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=d
        )
        ext = d / f"{name}.ext"
        ext.write_text(f"extendedKeyUsage={usage}\n" + (f"{san}\n" if san else ""))
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d,
        )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    for p in d.iterdir():
        p.chmod(0o600)


def _kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    # JSON is YAML: no YAML writer needed.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o600)


class ApiError(Exception):
    """A non-2xx answer of the API server, with its Status body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status = status
        self.body = body


@dataclass
class Cluster:
    """A running control plane: its URL, an administrator's kubeconfig, a small API client."""

    server: str
    kubeconfig: Path
    workdir: Path
    bins: Binaries
    _ssl: ssl.SSLContext = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # each the leader of its process group

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """One API call as the administrator; the answer's JSON. Warnings go to self.warnings."""
        data = json.dumps(body).encode() if body is not None else None
        # https only: the server URL is ours.
        req = urllib.request.Request(self.server + path, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:  # noqa: S310
                self.warnings += resp.headers.get_all("Warning") or []
                answer: dict[str, Any] = json.loads(resp.read() or b"{}")
                return answer
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                status = json.loads(raw)
            except ValueError:
                status = {"message": raw.decode(errors="replace")}
            raise ApiError(e.code, status) from None

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl against this cluster (never the user's own kubeconfig)."""
        return subprocess.run(
            [str(self.bins.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: killed with its parent even when that one dies without cleaning up
    # (SIGKILL, a crash), so no etcd or API server outlives a test run.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        # A process group of its own: stopped whole, never left behind.
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    # Anything the process left in its group goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait(
    what: str, ready: Any, procs: dict[str, subprocess.Popen[bytes]], logs: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited ({proc.returncode}) waiting for {what}:\n{tail}")
        try:
            if ready():
                return
        except (OSError, ApiError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s (logs in {logs})")
        time.sleep(0.2)


@contextlib.contextmanager
def control_plane(workdir: Path | None = None, timeout: float = 120) -> Iterator[Cluster]:
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports, stopped on exit.

    The API server runs with RBAC, the default admission plugins (PodSecurity among them) and
    service-account tokens; the controller manager runs every default controller, each with its
    own service account's credentials, as in a kubeadm cluster.
    """
    bins = ensure_binaries()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kube-")))
        pki = workdir / "pki"
        pki.mkdir(mode=0o700)
        _make_pki(pki)
        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig = workdir / "admin.kubeconfig"
        _kubeconfig(kubeconfig, server, pki, "admin")
        _kubeconfig(workdir / "kcm.kubeconfig", server, pki, "controller-manager")
        procs: dict[str, subprocess.Popen[bytes]] = {}

        def stop_all() -> None:
            # The reverse order of their start: controllers, API server, etcd.
            for proc in reversed(list(procs.values())):
                _stop(proc)

        stack.callback(stop_all)

        procs["etcd"] = _start(
            [
                str(bins.etcd),
                "--name=test",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                "--log-level=warn",
                # A throw-away store: durability buys nothing here and costs disk syncs.
                "--unsafe-no-fsync",
            ],
            workdir / "etcd.log",
        )
        procs["kube-apiserver"] = _start(
            [
                str(bins.apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints refuse.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
            workdir / "kube-apiserver.log",
        )
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        cluster = Cluster(server, kubeconfig, workdir, bins, ctx)

        def api_ready() -> bool:
            req = urllib.request.Request(server + "/readyz")  # noqa: S310
            with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:  # noqa: S310
                return bool(resp.status == 200)

        _wait("kube-apiserver /readyz", api_ready, procs, workdir, timeout)
        procs["kube-controller-manager"] = _start(
            [
                str(bins.controller_manager),
                f"--kubeconfig={workdir / 'kcm.kubeconfig'}",
                "--secure-port=0",  # no metrics server: nothing scrapes it
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                # The HPA controller's minReplicas step is then seen within seconds.
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--profiling=false",
            ],
            workdir / "kube-controller-manager.log",
        )

        def controllers_ready() -> bool:
            # The service-account controller makes "default" in every namespace: controllers run.
            cluster.get("/api/v1/namespaces/default/serviceaccounts/default")
            return True

        _wait("kube-controller-manager", controllers_ready, procs, workdir, timeout)
        cluster.pids = {name: proc.pid for name, proc in procs.items()}
        yield cluster


def main() -> None:
    bins = ensure_binaries()
    if sys.argv[1:] == ["up"]:

        class Stop(Exception):
            pass

        def stop(signum: int, frame: object) -> None:
            raise Stop

        # Explicit handlers: a shell's background job inherits SIGINT ignored.
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        with control_plane() as cluster, contextlib.suppress(Stop):
            print(f"export KUBECONFIG={cluster.kubeconfig}  # Ctrl-C (or SIGTERM) stops it")
            sys.stdout.flush()
            while True:
                signal.pause()
        return
    if sys.argv[1:]:
        sys.exit("usage: cluster.py [up]")
    for path in (bins.etcd, bins.apiserver, bins.controller_manager, bins.kubectl):
        print(path)


if __name__ == "__main__":
    main()
