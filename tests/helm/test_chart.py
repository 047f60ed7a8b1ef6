"""The Helm chart (deploy/helm/imagegate), checked offline: lint, render, API schemas, hardening.

Helm is built once from its Go module (deploy/helm/helm.py, cached in ~/.cache/imagegate/bin);
the Kubernetes API schemas come with the kubernetes-validate package. No cluster, no network.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

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
    "production": ["-f", str(CHART / "ci" / "production-values.yaml")],
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


def test_the_nginx_symlink_is_followed(helm: Path) -> None:
    """files/nginx is deploy/nginx itself, and Helm packages the files behind the link."""
    link = CHART / "files" / "nginx"
    assert link.is_symlink() and link.resolve() == NGINX.resolve()
    proc = subprocess.run([str(helm), "show", "all", str(CHART)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_production_topology(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    for role in ROLES:
        dep = r.one("Deployment", f"-{role}")
        assert dep["spec"].get("replicas", 2) >= 2, role
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
        assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        # The CLI knows the command (a renamed command would fail here, not in a cluster).
        parsed = parser.parse_args(args)
        assert parsed.command == args[0]
    assert jobs["migrate"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]


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
    assert seen >= 7


def test_upload_temp_space_follows_the_cap_and_queue(
    template: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    def size(*args: str) -> str:
        proc = template(*args)
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        dep = next(
            d
            for d in docs
            if d["metadata"]["name"].endswith("-uploader") and d["kind"] == "Deployment"
        )
        vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        return str(vols["data"]["emptyDir"]["sizeLimit"])

    # two files (received, processed) per upload in progress, plus 256 MiB
    assert size() == f"{2 * 40 * (2 + 8) + 256}Mi"
    assert size("--set", "uploader.codecQueue=20", "--set", "config.uploadMaxBytes=10485760") == (
        f"{2 * 10 * (2 + 20) + 256}Mi"
    )


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_secret_value_in_a_configmap_or_plain_env(
    rendered: dict[str, Rendered], name: str
) -> None:
    r = rendered[name]
    secrets: set[str] = set()
    public = {"sasl", "username", "tls"}  # KEDA takes these from a Secret too; not secret
    for s in r.kind("Secret"):
        for value in s.get("data", {}).values():
            secrets.add(base64.b64decode(value).decode())
        secrets |= {str(v) for k, v in s.get("stringData", {}).items() if k not in public}
    secrets = {s for s in secrets if len(s) >= 12}  # not "disable", "scram_sha512"
    if name != "production":  # production's Secrets all exist outside the chart
        assert secrets, f"{name}: the chart made no Secret to check against"
    pieces = [line for s in secrets for line in s.splitlines() if len(line) >= 12]
    for cm in r.kind("ConfigMap"):
        text = "\n".join(cm.get("data", {}).values())
        for piece in pieces:
            assert piece not in text, f"{name}: ConfigMap {cm['metadata']['name']} holds a secret"
        assert "PRIVATE KEY" not in text
    sensitive = re.compile(r"PASSWORD|SECRET|DATABASE_URL|PRIVATE")
    for workload, pod in r.pods():
        for _, c in containers(pod):
            for var, e in env_of(c).items():
                if sensitive.search(var) and not var.endswith("_FILE"):
                    assert "valueFrom" in e and "value" not in e, f"{workload}: {var} is inline"
                for piece in pieces:
                    assert piece not in str(e.get("value", "")), f"{workload}: {var}"


def test_network_policies(rendered: dict[str, Rendered]) -> None:
    r = rendered["production"]
    policies = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
        for p in r.kind("NetworkPolicy")
    }
    assert set(ROLES) <= set(policies)
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
    for role in ("relay", "worker"):
        assert all(rule["from"] != [gateway_peer] for rule in policies[role]["spec"]["ingress"])
    # Only the worker reaches beyond the cluster's dependencies (webhook targets).
    cidrs = {
        role: [
            peer for rule in p["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer
        ]
        for role, p in policies.items()
    }
    assert cidrs.pop("worker")
    assert not any(cidrs.values()), cidrs


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "s3.endpoint=https://s3.amazonaws.com"], "must be http://"),
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
    stack = _load("imagegate_stack_for_helm", ROOT / "deploy" / "local" / "stack.py")
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
        chart_way = envsubst(cm[tname], env)
        stack_way = stack.render(NGINX / tname, env)
        assert chart_way == stack_way, tname
        assert "${" not in chart_way, tname
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

    r = rendered[name]
    cm = r.one("ConfigMap", "-nginx")["data"]
    pod = r.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    nginx = next(c for c in pod["containers"] if c["name"] == "nginx")
    env = {k: str(e["value"]) for k, e in env_of(nginx).items()}
    conf_dir = env["CONF_DIR"]
    for key in ("CONF_DIR", "RUNTIME_DIR", "LOG_DIR", "TLS_CERT", "TLS_KEY", "OPENAPI_FILE"):
        env[key] = f"{tmp_path}{env[key]}"
    env["PLAIN_HTTP_SERVER"] = env["PLAIN_HTTP_SERVER"].replace(conf_dir, env["CONF_DIR"])
    for key in ("SECURITY_SERVERS", "UPLOADER_SERVERS", "MINIO_SERVERS"):
        env[key] = re.sub(r"server [^ ;:]+:", "server 127.0.0.1:", env[key])
    for key in ("CONF_DIR", "RUNTIME_DIR", "LOG_DIR"):
        Path(env[key]).mkdir(parents=True)
    openapi = Path(env["OPENAPI_FILE"])
    openapi.parent.mkdir(parents=True)
    openapi.write_text("{}")
    cert, key = ensure_self_signed(tmp_path / "tls-source")
    Path(env["TLS_CERT"]).parent.mkdir(parents=True)
    shutil.copy(cert, env["TLS_CERT"])
    shutil.copy(key, env["TLS_KEY"])
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
