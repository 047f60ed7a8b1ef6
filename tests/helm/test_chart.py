"""The Helm chart (deploy/helm/imagegate), checked offline: lint, render, API schemas, hardening.

Helm is built once from its Go module (deploy/helm/helm.py, cached in ~/.cache/imagegate/bin);
the Kubernetes API schemas come with the kubernetes-validate package. No cluster, no network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from tests.stack.conftest import stack_module

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "imagegate"
NGINX = ROOT / "deploy" / "nginx"
VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "dev": ["-f", str(CHART / "values-dev.yaml")],
    # In the Kafka cluster's namespace, where Strimzi's operators and Secrets are (the later
    # --namespace wins over the fixture's).
    "production": ["-f", str(CHART / "ci" / "production-values.yaml"), "--namespace", "kafka"],
    # Production without Kafka: events inline, webhooks sent by the uploader.
    "inline": [
        "-f",
        str(CHART / "ci" / "production-values.yaml"),
        "-f",
        str(CHART / "ci" / "inline-events-values.yaml"),
    ],
}
ROLES = ("gateway", "security", "uploader", "relay", "worker")
# Custom resources: no schema in kubernetes-validate (they belong to their operators).
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "KafkaTopic", "KafkaUser"}
# The one container allowed a writable root filesystem: dev Kafka (values-dev.yaml only).
WRITABLE_ROOT = {("dev", "kafka")}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    if name in sys.modules:
        return sys.modules[name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


helm_builder = _load("imagegate_helm_builder", ROOT / "deploy" / "helm" / "helm.py")


def kube_versions() -> list[str]:
    """The two newest Kubernetes minor versions the validator has schemas for."""
    minors = {kv_utils.major_minor(v) for v in kv_utils.all_versions()}
    newest = sorted(minors, key=lambda v: tuple(int(p) for p in v.split(".")))[-2:]
    return [f"{v}.0" for v in newest]


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key twice in a mapping (the API server's decoder refuses it too)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(dupes)}", node.start_mark
        )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass
class Rendered:
    name: str
    docs: list[dict[str, Any]]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str) -> dict[str, Any]:
        found = [d for d in self.kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{self.name}: {kind} *{name_suffix}: {len(found)} found"
        return found[0]

    def pods(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(workload name, pod spec) of every Deployment and Job."""
        for d in self.docs:
            if d["kind"] in ("Deployment", "Job"):
                yield d["metadata"]["name"], d["spec"]["template"]["spec"]


@pytest.fixture(scope="session")
def helm() -> Path:
    # On a fresh machine this builds Helm from its Go module once (about 2 minutes on 2 cores).
    path: Path = helm_builder.ensure_helm()
    return path


@pytest.fixture(scope="session")
def template(helm: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, kube: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(helm), "template", "imagegate", str(CHART), "--namespace", "images"]
        cmd += ["--kube-version", kube or kube_versions()[-1], *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture(scope="session")
def rendered(template: Callable[..., subprocess.CompletedProcess[str]]) -> dict[str, Rendered]:
    out = {}
    for name, args in VALUE_SETS.items():
        proc = template(*args)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        docs = [d for d in yaml.load_all(proc.stdout, Loader=_StrictLoader) if d]
        out[name] = Rendered(name, docs)
    return out


def containers(pod: dict[str, Any]) -> Iterator[tuple[bool, dict[str, Any]]]:
    for c in pod.get("initContainers", []):
        yield True, c
    for c in pod["containers"]:
        yield False, c


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- lint and render ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint(helm: Path, name: str) -> None:
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "--kube-version", kube_versions()[-1]]
        + VALUE_SETS[name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_the_nginx_symlink_is_followed(helm: Path, tmp_path: Path) -> None:
    """files/nginx is deploy/nginx itself, and Helm packages the files behind the link."""
    link = CHART / "files" / "nginx"
    assert link.is_symlink() and link.resolve() == NGINX.resolve()
    proc = subprocess.run(
        [str(helm), "package", str(CHART), "--destination", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    (tgz,) = tmp_path.glob("imagegate-*.tgz")
    with tarfile.open(tgz) as archive:
        packed = {
            m.name.removeprefix("imagegate/files/nginx/"): archive.extractfile(m)
            for m in archive.getmembers()
            if m.name.startswith("imagegate/files/nginx/") and m.isfile()
        }
        sources = {p.name: p.read_bytes() for p in NGINX.iterdir()}
        assert sources and set(packed) == set(sources)
        for fname, member in packed.items():
            assert member is not None and member.read() == sources[fname], fname


def test_production_topology(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    autoscaled = {"security", "uploader"}  # HorizontalPodAutoscalers, checked below
    for role in ROLES:
        dep = r.one("Deployment", f"-{role}")
        if role not in autoscaled:
            assert dep["spec"]["replicas"] >= 2, role
        r.one("PodDisruptionBudget", f"-{role}")
        spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    args = {
        d["metadata"]["name"].rsplit("-", 1)[-1]: d["spec"]["template"]["spec"]["containers"][0]
        for d in r.kind("Deployment")
        if d["metadata"]["name"].rsplit("-", 1)[-1] in ROLES[1:]
    }
    for role, c in args.items():
        assert c["args"][:2] == ["serve", role]
    for role in ("gateway", "security", "uploader"):
        r.one("Service", f"-{role}")
    for role in ("security", "uploader"):
        hpa = r.one("HorizontalPodAutoscaler", f"-{role}")
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert "replicas" not in r.one("Deployment", f"-{role}")["spec"]  # the HPA owns it


def test_one_time_work_is_hooks(rendered: dict[str, Rendered]) -> None:
    from imagegate.cli import _parser

    jobs = {
        j["metadata"]["name"].split("imagegate-", 1)[1]: j for j in rendered["default"].kind("Job")
    }
    assert set(jobs) == {"migrate", "storage-init"}
    parser = _parser()
    for job in jobs.values():
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        # The CLI knows the command (a renamed command would fail here, not in a cluster).
        parsed = parser.parse_args(args)
        assert parsed.command == args[0]
    assert jobs["migrate"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    assert jobs["storage-init"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "storage",
        "init",
    ]


# Production: before the new pods (pre-); dev: after the chart's own PostgreSQL and MinIO
# exist (post-install). Both: on every upgrade, before the new release's pods.
HOOKS = {
    "default": {"pre-install", "pre-upgrade"},
    "dev": {"post-install", "pre-upgrade"},
    "production": {"pre-install", "pre-upgrade"},
    "inline": {"pre-install", "pre-upgrade"},
}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_hooks_run_the_migration_first(rendered: dict[str, Rendered], name: str) -> None:
    jobs = {j["metadata"]["name"].rsplit("imagegate-", 1)[1]: j for j in rendered[name].kind("Job")}
    notes = {job: j["metadata"]["annotations"] for job, j in jobs.items()}
    assert set(notes) == {"migrate", "storage-init"}, name
    for job, ann in notes.items():
        assert set(ann["helm.sh/hook"].split(",")) == HOOKS[name], (name, job)
        policy = set(ann["helm.sh/hook-delete-policy"].split(","))
        assert "before-hook-creation" in policy, (name, job)  # a rerun replaces the old Job
    # Helm runs hooks of one kind by ascending weight: the schema before the bucket.
    assert int(notes["migrate"]["helm.sh/hook-weight"]) < int(
        notes["storage-init"]["helm.sh/hook-weight"]
    ), name


def test_probes_are_the_real_endpoints(rendered: dict[str, Rendered]) -> None:
    from imagegate.ops import router

    paths = {getattr(route, "path", "") for route in router.routes}
    assert {"/healthz", "/status"} <= paths
    for name, pod in rendered["default"].pods():
        if name.endswith(("-gateway", "-migrate", "-storage-init")):
            continue
        c = pod["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/status", name


def test_termination_matches_the_shutdown_grace(rendered: dict[str, Rendered]) -> None:
    for name, pod in rendered["default"].pods():
        if name.endswith(("-migrate", "-storage-init", "-gateway")):
            continue
        env = env_of(pod["containers"][0])
        grace = float(env["IMAGEGATE_SHUTDOWN_GRACE_SECONDS"]["value"])
        pause = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > grace + pause, name


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("kube", kube_versions())
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_manifests_match_the_api_schemas(
    template: Callable[..., subprocess.CompletedProcess[str]], name: str, kube: str
) -> None:
    proc = template(*VALUE_SETS[name], kube=kube)
    assert proc.returncode == 0, proc.stderr
    checked = 0
    for doc in yaml.load_all(proc.stdout, Loader=_StrictLoader):
        if not doc:
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] in CUSTOM_KINDS, f"no schema for {doc['kind']}"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} on {kube}: {doc['kind']} {doc['metadata']['name']}: {exc}")
    assert checked >= 20


def test_the_schema_check_can_fail() -> None:
    """A Deployment the API would refuse is refused here too (the validator is not a no-op)."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"nam": "x"}]}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kube_versions()[-1], strict=True)


# --- hardening ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_container_is_limited_probed_and_unprivileged(
    rendered: dict[str, Rendered], name: str
) -> None:
    seen = 0
    for workload, pod in rendered[name].pods():
        assert pod["automountServiceAccountToken"] is False, workload
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload
        is_job = workload.endswith(("-migrate", "-storage-init"))
        for init, c in containers(pod):
            seen += 1
            where = f"{name}: {workload}/{c['name']}"
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["limits"]), where
            assert {"cpu", "memory"} <= set(res["requests"]), where
            if not init and not is_job:
                assert "readinessProbe" in c and "livenessProbe" in c, where
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, where
            assert ctx.get("runAsUser", 0) != 0, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("capabilities", {}).get("add"), where
            assert ctx.get("privileged") is not True, where
            writable = (name, c["name"]) in WRITABLE_ROOT
            assert ctx.get("readOnlyRootFilesystem") is (not writable), where
    assert seen >= 6  # gateway (2), security, uploader, the two Jobs: at least


def image_default_data_dir() -> str:
    """IMAGEGATE_DATA_DIR of the image (the Dockerfile's ENV), used when the chart sets none."""
    found = re.search(r"IMAGEGATE_DATA_DIR=(\S+)", (ROOT / "Dockerfile").read_text())
    assert found
    return found.group(1)


def data_dirs(r: Rendered) -> Iterator[tuple[str, str, list[str]]]:
    """(where, data dir, mount paths) of every container that runs imagegate."""
    for workload, pod in r.pods():
        for _, c in containers(pod):
            if c["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1] != "imagegate":
                continue
            line = " ".join(c.get("command", []) + c.get("args", []))
            flag = re.search(r"--data-dir[= ](\S+)", line)
            env = env_of(c).get("IMAGEGATE_DATA_DIR", {}).get("value")
            data_dir = flag.group(1) if flag else env or image_default_data_dir()
            mounts = [m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])]
            yield f"{r.name}: {workload}/{c['name']}", data_dir, mounts


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_data_dir_is_a_folder_inside_a_volume(rendered: dict[str, Rendered], name: str) -> None:
    """imagegate creates its data dir and chmods it 0700: a volume's mount point is the
    kubelet's (root-owned), so the data dir must be a folder below one, never the mount."""
    seen = 0
    for where, data_dir, mounts in data_dirs(rendered[name]):
        seen += 1
        assert data_dir not in mounts, f"{where}: the data dir {data_dir} is a mount point"
        assert any(data_dir.startswith(f"{m}/") for m in mounts), (
            f"{where}: {data_dir} is on the read-only root filesystem"
        )
    assert seen >= 5, name


def run_without_privileges(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run imagegate as the pod does: no capability to chmod what it does not own."""
    cmd = [sys.executable, "-m", "imagegate", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) drops root's capabilities for this test"
        cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", *cmd]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return subprocess.run(
        cmd, env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False
    )


def volume_like_the_kubelets(tmp_path: Path) -> Path:
    """A folder like an emptyDir with fsGroup: mode 2777, owned by someone else (if we can)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() == 0:
        os.chown(mnt, 12345, 10001)
    mnt.chmod(0o2777)
    return mnt


def test_the_migration_job_runs_in_its_data_dir_layout(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """The migrate Job's layout, replayed with SQLite: the volume is root's, the data dir the
    process's own (created 0700 below the mount point)."""
    (where, data_dir, mounts) = next(
        d for d in data_dirs(rendered["production"]) if "-migrate/" in d[0]
    )
    mount = next(m for m in mounts if data_dir.startswith(f"{m}/"))
    mnt = volume_like_the_kubelets(tmp_path)
    local = mnt / Path(data_dir).relative_to(mount)
    proc = run_without_privileges(["db", "upgrade"], {"IMAGEGATE_DATA_DIR": str(local)})
    assert proc.returncode == 0, f"{where}: {proc.stderr[-2000:]}"
    assert "revision" in proc.stdout
    assert stat.S_IMODE(local.stat().st_mode) == 0o700
    assert (local / "imagegate.db").is_file()


def test_the_data_dir_at_the_mount_point_fails(tmp_path: Path) -> None:
    """The layout check above is needed: at the mount point itself imagegate cannot start."""
    if os.geteuid() != 0:
        pytest.skip("making a folder someone else's needs root (chown)")
    mnt = volume_like_the_kubelets(tmp_path)
    proc = run_without_privileges(["db", "upgrade"], {"IMAGEGATE_DATA_DIR": str(mnt)})
    assert proc.returncode != 0
    assert "Operation not permitted" in proc.stderr


def test_upload_temp_space_follows_the_cap_and_queue(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    def size(*args: str, role: str = "uploader") -> str:
        proc = template(*args)
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        dep = next(
            d
            for d in docs
            if d["metadata"]["name"].endswith(f"-{role}") and d["kind"] == "Deployment"
        )
        vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        return str(vols["data"]["emptyDir"]["sizeLimit"])

    # Two files (received, processed) per upload in progress, a copy of the original per
    # variant made on demand (16 at once) and per variant worker, plus 256 MiB.
    assert size() == f"{2 * 40 * (2 + 8) + 40 * (16 + 1) + 256}Mi"
    assert size("--set", "uploader.codecQueue=20", "--set", "config.uploadMaxBytes=10485760") == (
        f"{2 * 10 * (2 + 20) + 10 * (16 + 1) + 256}Mi"
    )
    # The worker: the original's copy and its outputs per variant worker.
    assert size(role="worker") == f"{2 * 40 * 1 + 256}Mi"
    assert size("--set", "worker.variantWorkers=3", role="worker") == f"{2 * 40 * 3 + 256}Mi"


# Env names that carry a secret, whatever the role: they must come from a Secret.
SENSITIVE_ENV = re.compile(r"PASSWORD|SECRET|_KEY$|DATABASE_URL|PRIVATE|TOKEN|CREDENTIAL")


def secret_leaks(r: Rendered) -> list[str]:
    """Where a secret shows in plain text: a ConfigMap or an env literal of any container.

    By structure for every value set (a secret-named env var is a Secret reference, or the path
    of a file in a mounted Secret); by value too where the chart makes Secrets.
    """
    leaks: list[str] = []
    secrets: set[str] = set()
    public = {"sasl", "username", "tls"}  # KEDA takes these from a Secret too; not secret
    for s in r.kind("Secret"):
        for value in s.get("data", {}).values():
            secrets.add(base64.b64decode(value).decode())
        secrets |= {str(v) for k, v in s.get("stringData", {}).items() if k not in public}
    pieces = [line for s in secrets for line in s.splitlines() if len(line) >= 12]
    credentials_in_url = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
    for cm in r.kind("ConfigMap"):
        where = f"{r.name}: ConfigMap {cm['metadata']['name']}"
        data = cm.get("data", {})
        leaks += [f"{where}: key {k}" for k in data if SENSITIVE_ENV.search(k.upper())]
        text = "\n".join(data.values())
        leaks += [f"{where}: a Secret's value" for piece in pieces if piece in text]
        if "PRIVATE KEY" in text or credentials_in_url.search(text):
            leaks.append(f"{where}: a key or a URL with credentials")
    for workload, pod in r.pods():
        secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for _, c in containers(pod):
            where = f"{r.name}: {workload}/{c['name']}"
            secret_dirs = [
                m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes
            ]
            for var, e in env_of(c).items():
                value = str(e.get("value", ""))
                if SENSITIVE_ENV.search(var) and "value" in e:
                    in_secret = any(value.startswith(f"{d}/") for d in secret_dirs)
                    if not in_secret:
                        leaks.append(f"{where}: {var} is a literal, not a Secret reference")
                if credentials_in_url.search(value):
                    leaks.append(f"{where}: {var} holds a URL with credentials")
                leaks += [f"{where}: {var} holds a Secret's value" for p in pieces if p in value]
    return leaks


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_secret_value_in_a_configmap_or_plain_env(
    rendered: dict[str, Rendered], name: str
) -> None:
    r = rendered[name]
    assert not secret_leaks(r)
    # The check looked at something: every imagegate container's credentials are references.
    refs = [
        e
        for _, pod in r.pods()
        for _, c in containers(pod)
        for var, e in env_of(c).items()
        if var in ("IMAGEGATE_DATABASE_URL", "IMAGEGATE_S3_SECRET_KEY")
    ]
    assert len(refs) >= 8 and all("secretKeyRef" in e["valueFrom"] for e in refs), name


def test_the_secret_check_can_fail(
    template: Callable[..., subprocess.CompletedProcess[str]], rendered: dict[str, Rendered]
) -> None:
    """A secret passed the wrong way (an inline env value) and a doctored ConfigMap are found."""
    fake = "hx-not-a-real-secret-7f3a9c"
    proc = template(
        *VALUE_SETS["production"], "--set", f"config.extraEnv.IMAGEGATE_S3_SECRET_KEY={fake}"
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    leaks = secret_leaks(Rendered("production+inline-secret", docs))
    assert any("IMAGEGATE_S3_SECRET_KEY is a literal" in leak for leak in leaks), leaks
    dev = rendered["dev"]
    password = next(
        str(v)
        for s in dev.kind("Secret")
        for k, v in s.get("stringData", {}).items()
        if k == "secretKey" and len(str(v)) >= 12
    )
    cm = {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"settings": f"s3 {password}"}}
    assert secret_leaks(Rendered("dev+configmap", [*dev.docs, cm]))


def policies_of(r: Rendered) -> dict[str, dict[str, Any]]:
    return {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
        for p in r.kind("NetworkPolicy")
    }


@pytest.mark.parametrize("name", ["production", "inline"])
def test_network_policies(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    policies = policies_of(r)
    roles = set(ROLES) if name == "production" else {"gateway", "security", "uploader"}
    assert roles | {"migrate", "storage-init"} == set(policies)
    for role, p in policies.items():
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"], role
    gateway_peer = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "imagegate",
                "app.kubernetes.io/instance": "imagegate",
                "app.kubernetes.io/component": "gateway",
            }
        }
    }
    for role in ("security", "uploader"):
        rules = policies[role]["spec"]["ingress"]
        assert all("from" in rule for rule in rules), role  # nobody else
        assert [gateway_peer] in [rule["from"] for rule in rules], role
    for role in roles & {"relay", "worker"}:
        assert all(rule["from"] != [gateway_peer] for rule in policies[role]["spec"]["ingress"])
    # Only where events are handled does traffic go beyond the cluster's dependencies: the
    # worker, or the uploader running the inline dispatcher (kafka.enabled=false).
    cidrs = {
        role
        for role, p in policies.items()
        for rule in p["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    }
    assert cidrs == ({"worker"} if name == "production" else {"uploader"})
    deliverer = r.one("Deployment", f"-{cidrs.pop()}")["spec"]["template"]["spec"]
    events = env_of(deliverer["containers"][0])["IMAGEGATE_EVENTS"]["value"]
    assert events == ("kafka" if name == "production" else "inline")


@pytest.mark.parametrize("name", ["default", "production", "inline"])
def test_webhooks_may_go_to_any_public_address_and_port(
    rendered: dict[str, Rendered], name: str
) -> None:
    """Webhook URLs may name any port and an IPv6 host; the cluster's private ranges are out."""
    policies = policies_of(rendered[name])
    role = "uploader" if name == "inline" else "worker"
    rules = [
        rule
        for rule in policies[role]["spec"]["egress"]
        if any("ipBlock" in peer for peer in rule.get("to", []))
    ]
    assert len(rules) == 1, rules
    (rule,) = rules
    assert "ports" not in rule  # every port
    blocks = {peer["ipBlock"]["cidr"]: peer["ipBlock"] for peer in rule["to"] if "ipBlock" in peer}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    v4, v6 = set(blocks["0.0.0.0/0"]["except"]), set(blocks["::/0"]["except"])
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= v4
    assert {"fc00::/7", "fe80::/10"} <= v6


def test_webhook_exceptions_are_values(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    proc = template(
        "--set", "networkPolicy.webhooks.exceptIPv4={10.96.0.0/12}",
        "--set", "networkPolicy.webhooks.exceptIPv6=null",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    worker = policies_of(Rendered("custom", docs))["worker"]
    blocks = {
        peer["ipBlock"]["cidr"]: peer["ipBlock"]
        for rule in worker["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    }
    assert blocks == {"0.0.0.0/0": {"cidr": "0.0.0.0/0", "except": ["10.96.0.0/12"]},
                      "::/0": {"cidr": "::/0"}}  # fmt: skip


def s3_ports(r: Rendered, s3_to: list[Any]) -> dict[str, list[int]]:
    """Per role, the ports of its egress rules to S3 (the rules whose peers are s3To)."""
    found: dict[str, list[int]] = {}
    for role, policy in policies_of(r).items():
        for rule in policy["spec"]["egress"]:
            if rule.get("to") == s3_to:
                found.setdefault(role, []).extend(port["port"] for port in rule["ports"])
    return found


@pytest.mark.parametrize(
    ("args", "port"),
    [([], 9000), (["--set", "s3.podPort=9443"], 9443), (["--set", "s3.podPort="], 443)],
)
def test_s3_egress_is_the_pods_port_not_the_urls(
    template: Callable[..., subprocess.CompletedProcess[str]], args: list[str], port: int
) -> None:
    """NetworkPolicies match the port after a Service's translation: a MinIO Tenant's Service
    listens on 443 (the endpoint URL's port) and sends to its pods' 9000."""
    values = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
    assert urlsplit(values["s3"]["endpoint"]).port == 443
    proc = template(*VALUE_SETS["production"], *args)
    assert proc.returncode == 0, proc.stderr
    r = Rendered("production", [d for d in yaml.safe_load_all(proc.stdout) if d])
    ports = s3_ports(r, values["networkPolicy"]["s3To"])
    assert set(ports) == {"gateway", "uploader", "worker", "storage-init"}
    assert all(p == [port] for p in ports.values()), ports


def sigv4_query_valid(url: str, host: str, secret_key: str) -> bool:
    """Check a presigned GET URL as S3 does: the signature over the request with this Host."""
    parts = urlsplit(url)
    pairs = dict(p.split("=", 1) for p in parts.query.split("&"))
    signature = pairs.pop("X-Amz-Signature")
    query = "&".join(f"{k}={v}" for k, v in sorted(pairs.items()))
    canonical = "\n".join(["GET", parts.path, query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    amz_date = pairs["X-Amz-Date"]
    scope = unquote(pairs["X-Amz-Credential"]).split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for piece in scope.split("/"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    mine = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mine, signature)


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("http://minio.storage.svc.cluster.local:80", "minio.storage.svc.cluster.local"),
        ("http://minio:9000", "minio:9000"),
        ("http://minio", "minio"),
        ("http://10.1.2.3:8080", "10.1.2.3:8080"),
        ("https://minio.storage.svc.cluster.local:443", "minio.storage.svc.cluster.local"),
        ("https://s3.example.com", "s3.example.com"),
        ("https://s3.example.com:9443", "s3.example.com:9443"),
    ],
)
def test_the_gateway_sends_the_host_the_urls_are_signed_for(
    template: Callable[..., subprocess.CompletedProcess[str]], endpoint: str, host: str
) -> None:
    """S3 checks a presigned URL's signature against the Host the gateway sends (MINIO_HOST);
    botocore leaves the scheme's default port out of the Host it signs."""
    from imagegate.storage.s3 import S3Storage

    proc = template(*VALUE_SETS["production"], "--set", f"s3.endpoint={endpoint}")
    assert proc.returncode == 0, proc.stderr
    r = Rendered("production", [d for d in yaml.safe_load_all(proc.stdout) if d])
    pod = r.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    gw = env_of(next(c for c in pod["containers"] if c["name"] == "nginx"))
    uploader = env_of(r.one("Deployment", "-uploader")["spec"]["template"]["spec"]["containers"][0])
    secret = "not-a-secret-but-a-signing-input"
    store = S3Storage(
        "images",
        endpoint=uploader["IMAGEGATE_S3_ENDPOINT"]["value"],
        region="us-east-1",
        access_key="AKIAHELMCHARTTEST",
        secret_key=secret,
    )
    url = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": "images", "Key": "public/x"}, ExpiresIn=60
    )
    assert gw["MINIO_HOST"]["value"] == host
    assert sigv4_query_valid(url, host, secret)
    # The check tells Hosts apart: the endpoint's host:port is refused when the port is the
    # scheme's default.
    default = 443 if endpoint.startswith("https") else 80
    with_port = f"{urlsplit(endpoint).hostname}:{urlsplit(endpoint).port or default}"
    assert sigv4_query_valid(url, with_port, secret) is (with_port == host)
    # The upstream itself keeps its port (NGINX's default would be 80 anyway).
    assert re.fullmatch(r"server [^ ;]+:\d+;", gw["MINIO_SERVERS"]["value"])
    # ...and is reached with the endpoint's scheme, its certificate checked for its host name.
    assert gw["S3_SCHEME"]["value"] == urlsplit(endpoint).scheme
    assert gw["S3_TLS_NAME"]["value"] == urlsplit(endpoint).hostname


def test_secrets_come_from_existing_secrets(rendered: dict[str, Rendered]) -> None:
    r = rendered["production"]
    dep = r.one("Deployment", "-uploader")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["IMAGEGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "images-db-app",
        "key": "uri",
    }
    assert env["IMAGEGATE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "images-tenant-user"
    )
    assert env["IMAGEGATE_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "imagegate-reader"
    )
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    # The uploader verifies tokens: it gets the public key(s), never the signing key.
    assert [i["key"] for i in vols["keys"]["secret"]["items"]] == ["jwt-public.pem"]
    assert not r.kind("Secret") or all(
        "signing" not in s["metadata"]["name"] for s in r.kind("Secret")
    )


def test_keda_scales_the_worker_by_lag(rendered: dict[str, Rendered]) -> None:
    r = rendered["production"]
    so = r.one("ScaledObject", "-worker")
    assert (
        so["spec"]["scaleTargetRef"]["name"] == r.one("Deployment", "-worker")["metadata"]["name"]
    )
    assert "replicas" not in r.one("Deployment", "-worker")["spec"]  # KEDA owns it
    topics = {t["metadata"]["topic"] for t in so["spec"]["triggers"]}
    assert topics == {"imagegate.accounts", "imagegate.images"}
    assert {t["type"] for t in so["spec"]["triggers"]} == {"kafka"}
    assert not rendered["default"].kind("ScaledObject")


def test_ingress_and_tls(rendered: dict[str, Rendered]) -> None:
    ing = rendered["production"].one("Ingress", "imagegate")
    assert ing["spec"]["tls"][0]["secretName"] == "images-example-com-tls"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"].endswith("-gateway")
    gw = rendered["production"].one("Deployment", "-gateway")
    tls = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}["tls"]
    assert tls["secret"]["secretName"] == "images-example-com-tls"
    assert not rendered["default"].kind("Ingress")


def gateway_env(r: Rendered) -> dict[str, str]:
    pod = r.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    return {k: str(e["value"]) for k, e in env_of(pod["containers"][-1]).items()}


@pytest.mark.parametrize(
    ("args", "proxies"),
    [
        ([], []),
        (["--set", "ingress.enabled=true"], ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]),
        (
            ["--set", "ingress.enabled=true", "--set", "gateway.trustedProxies={10.9.0.0/16}"],
            ["10.9.0.0/16"],
        ),
    ],
)
def test_the_gateway_believes_only_the_proxies_in_front_of_it(
    template: Callable[..., subprocess.CompletedProcess[str]], args: list[str], proxies: list[str]
) -> None:
    """Behind an Ingress the client's address and scheme come from the Ingress's headers (so
    the /metrics allow-list and the rate limits see the client); nobody else's are believed."""
    proc = template(*args)
    assert proc.returncode == 0, proc.stderr
    env = gateway_env(Rendered("x", [d for d in yaml.safe_load_all(proc.stdout) if d]))
    found = re.findall(r"set_real_ip_from (\S+);", env["REAL_IP_FROM"])
    assert found[: len(proxies)] == proxies and set(found) - set(proxies) <= {"fc00::/7"}
    assert re.findall(r"(\S+) 1;", env["TRUSTED_PROXY_GEO"]) == found
    assert env["REAL_IP_FROM"].replace("set_real_ip_from ", "").replace(";", "").split() == found


def test_an_ingress_keeps_the_plain_port_off_a_load_balancer(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    proc = template("--set", "ingress.enabled=true")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    service = next(d for d in docs if d["kind"] == "Service" and "gateway" in d["metadata"]["name"])
    assert service["spec"]["type"] == "ClusterIP"
    refused = template(
        "--set", "ingress.enabled=true", "--set", "gateway.service.type=LoadBalancer"
    )
    assert refused.returncode != 0 and "must be ClusterIP" in refused.stderr
    default = Rendered("d", [d for d in yaml.safe_load_all(template().stdout) if d])
    assert default.one("Service", "-gateway")["spec"]["type"] == "LoadBalancer"


def test_variant_signing_keys_come_from_a_secret(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    proc = template("--set", "variants.signingKeys.existingSecret=img-variant-keys")
    assert proc.returncode == 0, proc.stderr
    r = Rendered("x", [d for d in yaml.safe_load_all(proc.stdout) if d])
    uploader = r.one("Deployment", "-uploader")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(uploader)["IMAGEGATE_VARIANT_SIGNING_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "img-variant-keys", "key": "keys"}


def test_a_private_s3_ca_reaches_the_gateway_and_every_s3_client(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["production"]
    assert gateway_env(r)["S3_CA_FILE"] == "/etc/nginx/s3-ca/ca.crt"
    users = [r.one("Deployment", f"-{role}") for role in ("gateway", "uploader", "worker")]
    users += [r.one("Job", f"-{job}") for job in ("migrate", "storage-init")]
    for deployment in users:
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["s3-ca"]["secret"]["secretName"] == "images-tenant-ca"
        container = pod["containers"][-1]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "s3-ca")
        if container["name"] != "nginx":  # botocore reads AWS_CA_BUNDLE
            path = env_of(container)["AWS_CA_BUNDLE"]["value"]
            assert path == f"{mount['mountPath']}/ca.crt"
    assert gateway_env(rendered["default"])["S3_CA_FILE"] == "/etc/ssl/certs/ca-certificates.crt"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "s3.endpoint=ftp://s3.example.com"], "must be http:// or https://"),
        (["--set", "postgresql.existingSecret="], "postgresql.existingSecret is required"),
        (["--set", "signingKey.generate=false"], "signingKey.existingSecret is required"),
    ],
)
def test_bad_values_are_refused_with_a_message(
    template: Callable[..., subprocess.CompletedProcess[str]], args: list[str], message: str
) -> None:
    proc = template(*args)
    assert proc.returncode != 0
    assert message in proc.stderr


# --- the gateway's configuration: deploy/nginx, one source ------------------------------------


def envsubst(text: str, env: dict[str, str]) -> str:
    """What the nginx image's entrypoint does: envsubst limited to the defined variables."""
    tool = shutil.which("envsubst")
    if tool:
        shell_format = " ".join(f"${{{name}}}" for name in env)
        proc = subprocess.run(
            [tool, shell_format], input=text, env=env, capture_output=True, text=True, check=True
        )
        return proc.stdout
    # Same rule without the tool: ${NAME} of a defined variable is replaced, anything else kept.
    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), m.group(0)), text
    )


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_gateway_config_equals_deploy_nginx(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    cm = r.one("ConfigMap", "-nginx")["data"]
    sources = {p.name: p.read_text() for p in NGINX.iterdir()}
    # The chart carries deploy/nginx byte for byte: no second copy to drift.
    assert cm == sources
    pod = r.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    nginx = next(c for c in pod["containers"] if c["name"] == "nginx")
    env = {k: str(e["value"]) for k, e in env_of(nginx).items()}
    conf_dir = env["CONF_DIR"]
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == conf_dir
    assert nginx["args"][:3] == ["nginx", "-c", f"{conf_dir}/nginx.conf"]
    mounts = {m["mountPath"]: m for m in nginx["volumeMounts"]}
    templates = [n for n in sources if n.endswith(".template")]
    vols = {v["name"]: v for v in pod["volumes"]}
    items = vols[mounts["/etc/nginx/templates"]["name"]]["configMap"]["items"]
    assert sorted(i["path"] for i in items) == sorted(templates)
    for plain in set(sources) - set(templates):
        assert mounts[f"{conf_dir}/{plain}"]["subPath"] == plain
    for tname in templates:
        text = sources[tname]
        wanted = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
        assert wanted <= set(env), f"{tname}: {sorted(wanted - set(env))} not set on the gateway"
        # What the nginx image's entrypoint writes: every placeholder filled. (Equality with
        # deploy/nginx is the byte comparison above: the same files, rendered the same way.)
        assert "${" not in envsubst(cm[tname], env), tname
    routes = envsubst(cm["nginx.conf.template"], env)
    assert "listen 8443 ssl http2 reuseport;" in routes
    if name == "production":
        assert "listen 8081 reuseport; include /etc/nginx/conf/imagegate-routes.conf;" in routes
        assert "client_max_body_size 40m;" in envsubst(cm["imagegate-routes.conf.template"], env)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_gateway_config_passes_nginx_t(
    rendered: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    """The configuration the chart yields, laid out as in the pod, is valid NGINX.

    Paths move under tmp_path and the upstream names become 127.0.0.1 (no cluster DNS here);
    every other value is the chart's.
    """
    nginx_bin = stack_module().ensure_nginx()  # installed from Debian's packages if missing
    from imagegate.tls import ensure_self_signed
    from imagegate.web.assets import site

    r = rendered[name]
    cm = r.one("ConfigMap", "-nginx")["data"]
    pod = r.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    nginx = next(c for c in pod["containers"] if c["name"] == "nginx")
    env = {k: str(e["value"]) for k, e in env_of(nginx).items()}
    conf_dir = env["CONF_DIR"]
    for key in (
        "CONF_DIR",
        "RUNTIME_DIR",
        "OWNER_CACHE_DIR",
        "LOG_DIR",
        "TLS_CERT",
        "TLS_KEY",
        "OPENAPI_FILE",
        "WEB_ROOT",
    ):
        env[key] = f"{tmp_path}{env[key]}"
    env["PLAIN_HTTP_SERVER"] = env["PLAIN_HTTP_SERVER"].replace(conf_dir, env["CONF_DIR"])
    for key in ("SECURITY_SERVERS", "UPLOADER_SERVERS", "MINIO_SERVERS"):
        env[key] = re.sub(r"server [^ ;:]+:", "server 127.0.0.1:", env[key])
    for key in ("CONF_DIR", "RUNTIME_DIR", "LOG_DIR"):
        Path(env[key]).mkdir(parents=True)
    openapi = Path(env["OPENAPI_FILE"])
    openapi.parent.mkdir(parents=True)
    openapi.write_text("{}")
    site().export(Path(env["WEB_ROOT"]))  # what the init container writes
    cert, key = ensure_self_signed(tmp_path / "tls-source")
    Path(env["TLS_CERT"]).parent.mkdir(parents=True)
    shutil.copy(cert, env["TLS_CERT"])
    shutil.copy(key, env["TLS_KEY"])
    if env["S3_CA_FILE"].startswith("/etc/nginx/"):  # s3.caSecret, mounted in the pod
        env["S3_CA_FILE"] = f"{tmp_path}{env['S3_CA_FILE']}"
        Path(env["S3_CA_FILE"]).parent.mkdir(parents=True)
        shutil.copy(cert, env["S3_CA_FILE"])
    for fname, text in cm.items():
        out = envsubst(text, env) if fname.endswith(".template") else text
        (Path(env["CONF_DIR"]) / fname.removesuffix(".template")).write_text(out)
    proc = subprocess.run(
        [nginx_bin, "-t", "-q", "-c", f"{env['CONF_DIR']}/nginx.conf", "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_generated_signing_key_is_one_imagegate_loads(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    from imagegate.security.keys import load_or_create_signing_key

    secret = rendered["default"].one("Secret", "-signing-key")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pem = tmp_path / "jwt-signing-key.pem"
    pem.write_bytes(base64.b64decode(secret["data"]["jwt-signing-key.pem"]))
    before = pem.read_bytes()
    key = load_or_create_signing_key(pem)
    assert key.curve.name == "secp256r1"
    assert pem.read_bytes() == before  # loaded, not replaced


# --- kafka.setup: `imagegate events setup` as a hook Job, for a plain Kafka ---------------------

# Production values with a plain Kafka instead of Strimzi (the same users, SASL_SSL, the CA).
KAFKA_SETUP = [
    *VALUE_SETS["production"],
    "--set", "kafka.strimzi.enabled=false",
    "--set", "kafka.setup.enabled=true",
    "--set", "kafka.setup.existingSecret=kafka-admin",
]  # fmt: skip


def _render(
    template: Callable[..., subprocess.CompletedProcess[str]], *args: str, kube: str | None = None
) -> Rendered:
    proc = template(*args, kube=kube)
    assert proc.returncode == 0, proc.stderr
    return Rendered(
        "kafka-setup", [d for d in yaml.load_all(proc.stdout, Loader=_StrictLoader) if d]
    )


@pytest.fixture(scope="module")
def kafka_setup(template: Callable[..., subprocess.CompletedProcess[str]]) -> Rendered:
    return _render(template, *KAFKA_SETUP)


def _setup_job(r: Rendered) -> dict[str, Any]:
    return r.one("Job", "-kafka-setup")


def test_kafka_setup_job_runs_events_setup_with_the_values(kafka_setup: Rendered) -> None:
    from imagegate.cli import _parser

    values = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]
    production = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())["kafka"]
    c = _setup_job(kafka_setup)["spec"]["template"]["spec"]["containers"][0]
    args = _parser().parse_args(c["args"])  # the real command line, as the pod runs it
    assert (args.command, args.events_command) == ("events", "setup")
    topics = values["topics"]
    assert (args.partitions, args.replication_factor, args.min_insync_replicas) == (
        topics["partitions"],
        topics["replicas"],
        topics["minInsyncReplicas"],
    )
    assert args.acls and not args.grow_partitions
    users = production["users"]
    assert (args.relay_user, args.worker_user, args.reader_user) == (
        users["relay"]["username"],
        users["worker"]["username"],
        users["reader"]["username"],
    )


def test_kafka_setup_connects_as_the_services_do_with_the_admin_secret(
    kafka_setup: Rendered,
) -> None:
    pod = _setup_job(kafka_setup)["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["IMAGEGATE_KAFKA_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-admin",
        "key": "username",
    }
    assert env["IMAGEGATE_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-admin",
        "key": "password",
    }
    relay = env_of(
        kafka_setup.one("Deployment", "-relay")["spec"]["template"]["spec"]["containers"][0]
    )
    for name in (
        "IMAGEGATE_KAFKA_BOOTSTRAP",
        "IMAGEGATE_KAFKA_SECURITY_PROTOCOL",
        "IMAGEGATE_KAFKA_SASL_MECHANISM",
        "IMAGEGATE_KAFKA_TOPIC_PREFIX",
        "IMAGEGATE_KAFKA_CONSUMER_GROUP",
        "IMAGEGATE_KAFKA_CA_FILE",
    ):
        assert env[name]["value"] == relay[name]["value"], name
    # The CA file the setting names is the cluster CA Secret, mounted.
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-ca")
    assert env["IMAGEGATE_KAFKA_CA_FILE"]["value"] == f"{mount['mountPath']}/ca.crt"
    ca = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")["secret"]
    assert ca["secretName"] == "events-cluster-ca-cert"
    # Kafka only: no database URL, no S3 keys, no signing key in this pod.
    assert not {n for n in env if "DATABASE" in n or n.startswith("IMAGEGATE_S3_")}
    assert {v["name"] for v in pod["volumes"]} == {"data", "tmp", "kafka-ca"}
    assert not secret_leaks(kafka_setup)


def test_kafka_setup_is_a_hook_after_the_migration_and_the_bucket(kafka_setup: Rendered) -> None:
    jobs = {j["metadata"]["name"].split("imagegate-", 1)[1]: j for j in kafka_setup.kind("Job")}
    assert set(jobs) == {"migrate", "storage-init", "kafka-setup"}
    notes = {name: j["metadata"]["annotations"] for name, j in jobs.items()}
    setup = notes["kafka-setup"]
    # The same hooks as the other one-time work: before any pod of the release (pre-install,
    # pre-upgrade), so the relay and the worker start with their topics and ACLs in place.
    assert set(setup["helm.sh/hook"].split(",")) == HOOKS["production"]
    assert setup["helm.sh/hook"] == notes["migrate"]["helm.sh/hook"]
    assert setup["helm.sh/hook-delete-policy"] == notes["migrate"]["helm.sh/hook-delete-policy"]
    weights = {name: int(n["helm.sh/hook-weight"]) for name, n in notes.items()}
    assert weights["migrate"] < weights["storage-init"] < weights["kafka-setup"]


def test_kafka_setup_pod_is_hardened_like_the_other_hooks(kafka_setup: Rendered) -> None:
    setup = _setup_job(kafka_setup)["spec"]
    migrate = kafka_setup.one("Job", "-migrate")["spec"]
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert setup[key] == migrate[key], key
    pod, ref = setup["template"]["spec"], migrate["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "restartPolicy"):
        assert pod[key] == ref[key], key
    c, rc = pod["containers"][0], ref["containers"][0]
    for key in ("image", "securityContext", "resources"):
        assert c[key] == rc[key], key
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    (where, data_dir, mounts) = next(d for d in data_dirs(kafka_setup) if "-kafka-setup/" in d[0])
    assert any(data_dir.startswith(f"{m}/") for m in mounts), where


def test_kafka_setup_pod_may_reach_dns_and_kafka_only(kafka_setup: Rendered) -> None:
    production = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
    policies = policies_of(kafka_setup)
    policy = policies["kafka-setup"]
    labels = _setup_job(kafka_setup)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"] == []
    egress = policy["spec"]["egress"]
    assert egress[0] == {
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    }
    assert egress[1:] == [
        {
            "to": production["networkPolicy"]["kafkaTo"],
            "ports": [{"port": p, "protocol": "TCP"} for p in production["kafka"]["ports"]],
        }
    ]
    # The relay reaches Kafka by the same rule (the same brokers, the same ports).
    assert egress[1] in policies["relay"]["spec"]["egress"]


@pytest.mark.parametrize("kube", kube_versions())
def test_kafka_setup_manifests_match_the_api_schemas(
    template: Callable[..., subprocess.CompletedProcess[str]], kube: str
) -> None:
    r = _render(template, *KAFKA_SETUP, kube=kube)
    checked = set()
    for doc in r.docs:
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] in CUSTOM_KINDS, f"no schema for {doc['kind']}"
            continue
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"kafka-setup on {kube}: {doc['kind']} {doc['metadata']['name']}: {exc}")
        checked.add((doc["kind"], doc["metadata"]["name"]))
    assert {("Job", "imagegate-kafka-setup"), ("NetworkPolicy", "imagegate-kafka-setup")} <= checked
    assert not r.kind("KafkaTopic") and not r.kind("KafkaUser")


def test_kafka_setup_lints(helm: Path) -> None:
    lint = [str(helm), "lint", "--strict", str(CHART), "--kube-version", kube_versions()[-1]]
    proc = subprocess.run(
        [*lint, *KAFKA_SETUP],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kafka_topics_values_shape_both_the_job_and_strimzi(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    layout = ["--set", "kafka.topics.partitions=12", "--set", "kafka.topics.replicas=5"]
    layout += ["--set", "kafka.topics.minInsyncReplicas=3"]
    job = _render(
        template,
        *KAFKA_SETUP,
        *layout,
        "--set", "kafka.setup.acls=false",
        "--set", "kafka.setup.growPartitions=true",
    )  # fmt: skip
    args = _setup_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "events", "setup", "--partitions", "12", "--replication-factor", "5",
        "--min-insync-replicas", "3", "--grow-partitions",
    ]  # fmt: skip
    strimzi = _render(template, *VALUE_SETS["production"], *layout)
    for topic in strimzi.kind("KafkaTopic"):
        spec = topic["spec"]
        assert (spec["partitions"], spec["replicas"]) == (12, 5)
        assert spec["config"]["min.insync.replicas"] == 3
    assert len(strimzi.kind("KafkaTopic")) == 2
    assert not [j for j in strimzi.kind("Job") if j["metadata"]["name"].endswith("-kafka-setup")]


def test_kafka_setup_without_sasl_needs_no_secret(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    r = _render(
        template,
        "-f", str(CHART / "values-dev.yaml"),
        "--set", "kafka.setup.enabled=true",
        "--set", "kafka.setup.acls=false",
    )  # fmt: skip
    job = _setup_job(r)
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["IMAGEGATE_KAFKA_SECURITY_PROTOCOL"]["value"] == "PLAINTEXT"
    assert "IMAGEGATE_KAFKA_USERNAME" not in env and "IMAGEGATE_KAFKA_PASSWORD" not in env
    assert "--acls" not in job["spec"]["template"]["spec"]["containers"][0]["args"]
    # values-dev: after the chart's own Kafka exists, like the other hooks.
    assert set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")) == HOOKS["dev"]


def test_kafka_setup_is_off_by_default(rendered: dict[str, Rendered]) -> None:
    for name, r in rendered.items():
        assert not [j for j in r.kind("Job") if j["metadata"]["name"].endswith("-kafka-setup")]
        assert "kafka-setup" not in policies_of(r), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*VALUE_SETS["production"], "--set", "kafka.setup.enabled=true"],
            "kafka.setup.enabled and kafka.strimzi.enabled exclude each other",
        ),
        (
            ["--set", "kafka.setup.enabled=true"],
            "kafka.setup.existingSecret is required",
        ),
    ],
    ids=["with-strimzi", "sasl-without-secret"],
)
def test_kafka_setup_bad_values_are_refused_with_a_message(
    template: Callable[..., subprocess.CompletedProcess[str]], args: list[str], message: str
) -> None:
    proc = template(*args)
    assert proc.returncode != 0
    assert message in proc.stderr
