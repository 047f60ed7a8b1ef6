"""The chart installed on a real kube-apiserver: admission, PodSecurity `restricted`, controllers.

deploy/helm/cluster.py starts etcd, kube-apiserver and kube-controller-manager (built once from
their Go modules) on loopback. For each value set of test_chart.py the release is installed with
`helm install`, in a namespace that enforces the `restricted` Pod Security Standard, upgraded and
uninstalled. There is no kubelet and no scheduler: the Pods the controllers create stay Pending,
which is enough to see them admitted. The hooks (Jobs that would wait for a kubelet) are skipped
by helm (--no-hooks) and sent to the API server as a server-side dry run instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import yaml

from tests.helm.test_chart import (
    CHART,
    KAFKA_SETUP,
    ROOT,
    VALUE_SETS,
    WRITABLE_ROOT,
    _StrictLoader,
)


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


helm_builder = _load("imagegate_helm_builder", ROOT / "deploy" / "helm" / "helm.py")
kube = _load("imagegate_kube_cluster", ROOT / "deploy" / "helm" / "cluster.py")

RELEASE = "imagegate"
PSA_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
} | {"pod-security.kubernetes.io/enforce-version": "latest"}
# The operators' custom resources. Their operators are not here: each kind is registered with a
# schema that keeps any field, so the API server stores what the chart sends (what an operator's
# own schema would refuse is not checked here).
CRDS = {
    ("keda.sh", "v1alpha1"): [
        ("ScaledObject", "scaledobjects"),
        ("TriggerAuthentication", "triggerauthentications"),
    ],
    ("kafka.strimzi.io", "v1beta2"): [("KafkaTopic", "kafkatopics"), ("KafkaUser", "kafkausers")],
}
UPGRADE_TAG = "0.1.1-upgrade"
# test_chart.py's value sets, and its plain-Kafka variant (a third hook Job, kafka-setup).
INSTALLS = VALUE_SETS | {"kafka-setup": KAFKA_SETUP}
T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], timeout: float = 90) -> T:
    """check()'s first truthy value; fails with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout:.0f} s"
        time.sleep(0.25)


def quantity(q: str | int) -> Decimal:
    """A Kubernetes resource quantity as a number ("500m" == "0.5", "1Gi" == 1073741824)."""
    units = {"m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9)}
    units |= {f"{p}i": Decimal(1024**n) for n, p in enumerate("KMGTP", start=1)}
    found = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert found, q
    return Decimal(found.group(1)) * units.get(found.group(2), Decimal(1))


def resources_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        {k: quantity(v) for k, v in a.get(part, {}).items()}
        == {k: quantity(v) for k, v in b.get(part, {}).items()}
        for part in ("requests", "limits")
    )


def selector_string(match_labels: dict[str, str]) -> str:
    """A labelSelector query value."""
    return quote(",".join(f"{k}={v}" for k, v in sorted(match_labels.items())), safe="=,")


def namespace_of(args: list[str]) -> str:
    """The namespace of a value set: its own --namespace, or one named after it."""
    # The last one: helm's flag parsing takes the last of a repeated flag too.
    found = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    return found[-1] if found else ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # Cold: builds etcd and Kubernetes from their Go modules once (cluster.py), like helm.
    with kube.control_plane(tmp_path_factory.mktemp("kube")) as c:
        for (group, version), kinds in CRDS.items():
            for kind, plural in kinds:
                c.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinition",
                    "metadata": {"name": f"{plural}.{group}"},
                    "spec": {
                        "group": group,
                        "scope": "Namespaced",
                        "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                                  "listKind": f"{kind}List"},
                        "versions": [{
                            "name": version, "served": True, "storage": True,
                            "schema": {"openAPIV3Schema": {
                                "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                            }},
                        }],
                    },
                })  # fmt: skip
        for (group, _), kinds in CRDS.items():
            for _, plural in kinds:
                path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{group}"
                poll(
                    f"CRD {plural}.{group} established",
                    lambda p=path: any(
                        cond["type"] == "Established" and cond["status"] == "True"
                        for cond in c.get(p).get("status", {}).get("conditions", [])
                    ),
                )
        yield c
    # The control plane's processes are gone with their groups: nothing is left running.


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory, cluster: Any) -> Callable[..., str]:
    binary = helm_builder.ensure_helm()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, warnings: list[str] | None = None) -> str:
        """helm's output; its warnings must be none, or are put in `warnings`."""
        proc = subprocess.run(
            [str(binary), "--kubeconfig", str(cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        # The API server's warnings (PodSecurity on a Deployment's template, deprecated APIs,
        # unknown fields) reach helm's stderr: there must be none. The one expected line is
        # helm's note on files/nginx, the symlink to deploy/nginx (test_chart.py checks it).
        noise = re.compile(r"^walk\.go:\d+: found symbolic link in path: .*/files/nginx resolves")
        warned = [ln for ln in proc.stderr.splitlines() if ln.strip() and not noise.match(ln)]
        if warnings is not None:
            warnings += warned
        else:
            assert not warned, f"helm {args[0]} warned:\n{proc.stderr}"
        return proc.stdout

    return run


def docs_of(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(manifest, Loader=_StrictLoader) if d]


def pod_from_template(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
        "spec": template["spec"],
    }


def dry_run_pod(cluster: Any, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = cluster.request(
        "POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All&fieldValidation=Strict", pod
    )
    return result


def check_pod_security(where: str, pod: dict[str, Any], writable: set[str]) -> None:
    """The claims the chart makes, read back from the admitted Pod (after the server's defaults)."""
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, where
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert spec.get("automountServiceAccountToken") is False, where
    # No service-account token was mounted by the ServiceAccount admission plugin.
    for v in spec.get("volumes", []):
        assert "projected" not in v and not v["name"].startswith("kube-api-access"), where
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for c in spec.get("initContainers", []) + spec["containers"]:
        ctx = c.get("securityContext", {})
        at = f"{where}/{c['name']}"
        assert ctx.get("allowPrivilegeEscalation") is False, at
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], at
        assert not ctx.get("capabilities", {}).get("add"), at
        assert ctx.get("privileged") in (None, False), at
        assert ctx.get("readOnlyRootFilesystem") is (c["name"] not in writable), at
        # runAsNonRoot alone: the kubelet would refuse an image whose USER is a name or root.
        uid = ctx.get("runAsUser", psc.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, at
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})), (at, part)


def kept_on_purpose(obj: dict[str, Any]) -> bool:
    """helm.sh/resource-policy: keep (helm uninstall leaves it)."""
    return obj["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"


def references(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(kind, name) of the Secrets and ConfigMaps a pod spec reads (env, envFrom, volumes)."""
    for c in spec.get("initContainers", []) + spec["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"]["name"]
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"]["name"]
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                yield "Secret", src["secretRef"]["name"]
            if "configMapRef" in src:
                yield "ConfigMap", src["configMapRef"]["name"]
    for v in spec.get("volumes", []):
        if "secret" in v:
            yield "Secret", v["secret"]["secretName"]
        if "configMap" in v:
            yield "ConfigMap", v["configMap"]["name"]
        for src in v.get("projected", {}).get("sources", []):
            if "secret" in src:
                yield "Secret", src["secret"]["name"]
            if "configMap" in src:
                yield "ConfigMap", src["configMap"]["name"]


def pods_of(cluster: Any, ns: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
    sel = selector_string(match_labels)
    items: list[dict[str, Any]] = cluster.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={sel}")[
        "items"
    ]
    return items


def expected_replicas(cluster: Any, ns: str, deployment: dict[str, Any]) -> int:
    """spec.replicas, or the HPA's minReplicas (the HPA controller scales up to it), or 1."""
    name = deployment["metadata"]["name"]
    if "replicas" in deployment["spec"]:
        return int(deployment["spec"]["replicas"])
    hpas = cluster.get(f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers")["items"]
    for hpa in hpas:
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return int(hpa["spec"]["minReplicas"])
    return 1  # the API server's default (KEDA, absent here, would scale it)


def all_namespaced(cluster: Any, ns: str) -> list[tuple[str, str]]:
    """(kind, name) of every object in the namespace, of every listable kind."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name")
    assert kinds.returncode == 0, kinds.stderr
    names = ",".join(k for k in kinds.stdout.split() if k not in ("events", "events.events.k8s.io"))
    out = cluster.kubectl("get", names, "-n", ns, "-o", "json", "--ignore-not-found")
    assert out.returncode == 0, out.stderr
    return sorted((o["kind"], o["metadata"]["name"]) for o in json.loads(out.stdout)["items"])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(INSTALLS))
def test_install_upgrade_uninstall_on_a_real_api_server(
    cluster: Any, helm: Callable[..., str], name: str
) -> None:
    values = INSTALLS[name]
    cluster.warnings.clear()  # the API server's warnings to this test's own requests
    ns = namespace_of(values) or f"images-{name}"
    writable = {c for (vs, c) in WRITABLE_ROOT if vs == name}
    cluster.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": PSA_LABELS},
    })  # fmt: skip
    poll(f"{ns}: default ServiceAccount", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", ns).returncode == 0)  # fmt: skip

    server_version = cluster.get("/version")["gitVersion"]
    render = ["template", RELEASE, str(CHART), "--namespace", ns, "--kube-version", server_version]
    rendered = docs_of(helm(*render, *values))

    # Every object, the hooks too, through the API server's strict field validation, as a
    # create and as a server-side apply (Helm 4, Argo CD, Flux: list keys must be unique).
    manifest_all = yaml.safe_dump_all(rendered)
    for how in (["create"], ["apply", "--server-side", "--field-manager=imagegate-test"]):
        dry = cluster.kubectl(
            *how, "--dry-run=server", "--validate=strict", "-n", ns, "-f", "-", "-o", "name",
            stdin=manifest_all,
        )  # fmt: skip
        assert dry.returncode == 0, f"{how}: {dry.stderr}"
        assert not dry.stderr.strip(), f"{how}: {dry.stderr}"  # warnings (PodSecurity, fields)
        assert len(dry.stdout.split()) == len(rendered), dry.stdout

    # --- install -------------------------------------------------------------------------
    helm("install", RELEASE, str(CHART), "--namespace", ns, "--no-hooks", *values)
    manifest = helm("get", "manifest", RELEASE, "--namespace", ns)
    objects = docs_of(manifest)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {
        (d["kind"], d["metadata"]["name"]) for d in rendered if "helm.sh/hook" not in
        d["metadata"].get("annotations", {})
    }  # fmt: skip
    got = cluster.kubectl("get", "-f", "-", "-n", ns, "-o", "json", stdin=manifest)
    assert got.returncode == 0, got.stderr
    live = {(o["kind"], o["metadata"]["name"]): o for o in json.loads(got.stdout)["items"]}
    assert len(live) == len(objects)

    # The namespace really enforces `restricted`: a chart Pod made a little less strict is
    # refused, so the Pods admitted here passed the check. (After the install: the ServiceAccount
    # admission plugin, which runs first, wants the chart's ServiceAccount.)
    deployments = [d for d in rendered if d["kind"] == "Deployment"]
    template = deployments[0]["spec"]["template"]
    for field, value in (("allowPrivilegeEscalation", True), ("readOnlyRootFilesystem", None)):
        pod = pod_from_template(json.loads(json.dumps(template)), "psa-negative-control")
        ctx = pod["spec"]["containers"][0]["securityContext"]
        if field == "allowPrivilegeEscalation":
            ctx[field] = value
            with pytest.raises(kube.ApiError) as refused:
                dry_run_pod(cluster, ns, pod)
            assert refused.value.status == 403, refused.value
            assert 'violates PodSecurity "restricted:latest"' in str(refused.value)
            assert "allowPrivilegeEscalation" in str(refused.value)
        else:
            # Not part of the standard: PSA lets a writable root through, the test's own check
            # (check_pod_security) is what catches it.
            ctx.pop(field, None)
            admitted = dry_run_pod(cluster, ns, pod)
            with pytest.raises(AssertionError):
                check_pod_security("negative control", admitted, writable)

    # Deployment -> ReplicaSet -> Pods, made by the real controllers and admitted as restricted.
    pods_by_deployment: dict[str, list[dict[str, Any]]] = {}
    for dep in (o for o in objects if o["kind"] == "Deployment"):
        dname = dep["metadata"]["name"]
        want = expected_replicas(cluster, ns, dep)
        sel = dep["spec"]["selector"]["matchLabels"]
        pods = poll(
            f"{ns}/{dname}: {want} Pods",
            lambda s=sel, w=want: p if len(p := pods_of(cluster, ns, s)) == w else None,
        )
        pods_by_deployment[dname] = pods
        rs = cluster.get(
            f"/apis/apps/v1/namespaces/{ns}/replicasets?labelSelector={selector_string(sel)}"
        )["items"]
        assert len(rs) == 1 and rs[0]["metadata"]["ownerReferences"][0]["name"] == dname
        tmpl = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
        tmpl |= {c["name"]: c for c in dep["spec"]["template"]["spec"].get("initContainers", [])}
        for pod in pods:
            where = f"{name}: {ns}/{pod['metadata']['name']}"
            assert pod["metadata"]["ownerReferences"][0]["name"] == rs[0]["metadata"]["name"]
            assert pod["status"]["phase"] == "Pending", where  # no kubelet, no scheduler
            check_pod_security(where, pod, writable)
            for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
                assert resources_equal(c["resources"], tmpl[c["name"]].get("resources", {}))
            sa = pod["spec"]["serviceAccountName"]
            cluster.get(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}")

    # Every Service, PodDisruptionBudget and NetworkPolicy selects Pods of the release.
    labels_of_pods = [p["metadata"]["labels"] for ps in pods_by_deployment.values() for p in ps]
    hooks = docs_of(helm("get", "hooks", RELEASE, "--namespace", ns))
    hook_pod_labels = [
        h["spec"]["template"]["metadata"]["labels"] for h in hooks if h["kind"] == "Job"
    ]

    def selects(match: dict[str, str], pool: list[dict[str, str]]) -> int:
        return sum(all(lbl.get(k) == v for k, v in match.items()) for lbl in pool)

    for (kind, oname), obj in live.items():
        if kind == "Service":
            assert selects(obj["spec"]["selector"], labels_of_pods), oname
            assert obj["spec"]["clusterIP"], oname  # allocated by the API server
        elif kind == "NetworkPolicy":
            match = obj["spec"]["podSelector"]["matchLabels"]
            assert selects(match, labels_of_pods + hook_pod_labels), oname
        elif kind == "PodDisruptionBudget":
            match = obj["spec"]["selector"]["matchLabels"]
            n = selects(match, labels_of_pods)
            assert n, oname
            # The disruption controller counted the same Pods through the same selector.
            path = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{oname}"
            poll(f"{oname}: expectedPods", lambda p=path, n=n: cluster.get(p).get(
                "status", {}).get("expectedPods") == n)  # fmt: skip
        elif kind == "Ingress":
            for rule in obj["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    backend = p["backend"]["service"]
                    svc = live[("Service", backend["name"])]
                    assert backend["port"]["name"] in {x.get("name") for x in svc["spec"]["ports"]}
        elif kind == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]["name"]
            assert ("Deployment", target) in live, oname

    # The hooks, which helm skipped (they would wait for a kubelet): created for real, one by
    # one, so that the Job controller makes their Pods; then deleted with their Pods.
    assert hooks and {h["kind"] for h in hooks} == {"Job"}, hooks
    for hook in hooks:
        hname = hook["metadata"]["name"]
        cluster.request("POST", f"/apis/batch/v1/namespaces/{ns}/jobs?fieldValidation=Strict", hook)
        job_pods = poll(
            f"{ns}/{hname}: the Job's Pod",
            lambda j=hname: pods_of(cluster, ns, {"batch.kubernetes.io/job-name": j}),
        )
        check_pod_security(f"{name}: hook {hname}", job_pods[0], writable)
        cluster.request(
            "DELETE",
            f"/apis/batch/v1/namespaces/{ns}/jobs/{hname}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"},
        )
    if name == "dev":
        # A laptop install needs nothing from outside: every Secret and ConfigMap a Pod or a hook
        # reads is in the namespace (a kubelet would stop at a missing one).
        pod_specs = [p["spec"] for ps in pods_by_deployment.values() for p in ps]
        pod_specs += [h["spec"]["template"]["spec"] for h in hooks]
        for kind, ref in sorted({r for spec in pod_specs for r in references(spec)}):
            plural = "secrets" if kind == "Secret" else "configmaps"
            cluster.get(f"/api/v1/namespaces/{ns}/{plural}/{ref}")

    # The generated signing key (default values): lookup keeps it across an upgrade.
    keys_before = {
        k: o["data"] for (kind, k), o in live.items() if kind == "Secret" and kept_on_purpose(o)
    }

    # --- upgrade: a new image tag -> a new ReplicaSet whose Pods are admitted too --------------
    helm(
        "upgrade", RELEASE, str(CHART), "--namespace", ns, "--no-hooks", *values,
        "--set", f"image.tag={UPGRADE_TAG}",
    )  # fmt: skip
    for dep in (o for o in objects if o["kind"] == "Deployment"):
        dname = dep["metadata"]["name"]
        current = cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{dname}")
        images = {c["image"] for c in current["spec"]["template"]["spec"]["containers"]}
        old = {c["image"] for c in dep["spec"]["template"]["spec"]["containers"]}
        if images == old:
            continue  # not the imagegate image (values-dev.yaml's dependencies)
        assert all(i.endswith(f":{UPGRADE_TAG}") for i in images), (dname, images)
        sel = dep["spec"]["selector"]["matchLabels"]

        def upgraded(s: dict[str, str] = sel, d: str = dname) -> list[dict[str, Any]] | None:
            pods = [
                p for p in pods_of(cluster, ns, s)
                if p["spec"]["containers"][0]["image"].endswith(f":{UPGRADE_TAG}")
            ]  # fmt: skip
            return pods or None

        # maxUnavailable 0: without a kubelet the rollout stops at the first surge Pod.
        for pod in poll(f"{ns}/{dname}: a Pod of the upgrade", upgraded):
            check_pod_security(f"{name} upgraded: {pod['metadata']['name']}", pod, writable)
    for k, data in keys_before.items():
        assert cluster.get(f"/api/v1/namespaces/{ns}/secrets/{k}")["data"] == data, k

    # --- uninstall: nothing left but what the chart keeps on purpose ---------------------------
    helm("uninstall", RELEASE, "--namespace", ns, "--no-hooks", "--wait", "--timeout", "120s")
    kept = {(o["kind"], o["metadata"]["name"]) for o in objects if kept_on_purpose(o)}
    # Left by the cluster itself in every namespace.
    baseline = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}

    poll(
        f"{ns}: everything of the release deleted (garbage collector included)",
        lambda: not set(all_namespaced(cluster, ns)) - baseline - kept,
    )
    assert set(all_namespaced(cluster, ns)) == baseline | kept
    assert helm("list", "--namespace", ns, "--all", "-q").strip() == ""

    # The namespace controller finalizes the namespace: nothing in it holds it back.
    cluster.request("DELETE", f"/api/v1/namespaces/{ns}")

    def namespace_gone() -> bool:
        try:
            cluster.get(f"/api/v1/namespaces/{ns}")
        except kube.ApiError as e:
            return e.status == 404
        return False

    poll(f"namespace {ns} deleted", namespace_gone)
    assert not cluster.warnings, cluster.warnings


def test_a_pod_the_namespace_refuses_is_never_created(
    cluster: Any, helm: Callable[..., str]
) -> None:
    """What the test above relies on: the release installs, but no Pod of a refused template."""
    ns = "images-refused"
    cluster.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": PSA_LABELS},
    })  # fmt: skip
    warned: list[str] = []
    loose = ["--set", "securityContext.allowPrivilegeEscalation=true"]
    helm("install", RELEASE, str(CHART), "--namespace", ns, "--no-hooks", *loose, warnings=warned)
    # klog's quoting: would violate PodSecurity \"restricted:latest\"
    assert any("would violate PodSecurity" in w and "restricted:latest" in w for w in warned)
    deps = cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]
    assert deps
    for dep in deps:
        sel = selector_string(dep["spec"]["selector"]["matchLabels"])
        path = f"/apis/apps/v1/namespaces/{ns}/replicasets?labelSelector={sel}"

        def refused(p: str = path) -> str | None:
            for rs in cluster.get(p)["items"]:
                for cond in rs.get("status", {}).get("conditions", []):
                    if cond["type"] == "ReplicaFailure" and "PodSecurity" in cond["message"]:
                        return str(cond["message"])
            return None

        message = poll(f"{dep['metadata']['name']}: the ReplicaSet's FailedCreate", refused)
        assert "allowPrivilegeEscalation != false" in message
        assert not pods_of(cluster, ns, dep["spec"]["selector"]["matchLabels"])
    helm("uninstall", RELEASE, "--namespace", ns, "--no-hooks", "--wait", "--timeout", "120s")


def test_the_control_plane_leaves_no_process_behind(tmp_path: Path) -> None:
    with kube.control_plane(tmp_path) as c:
        pids = dict(c.pids)
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert all(Path(f"/proc/{pid}").exists() for pid in pids.values())
        assert c.get("/version")["gitVersion"] == kube.KUBE_VERSION
    # Stopped and reaped: not even a zombie.
    assert not [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
