"""Status, health, metrics, the OpenAPI description, and JSON errors everywhere."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Account, Target
from tests.support import images


def test_status_is_the_seeds(client: httpx.Client) -> None:
    assert client.get("/status").json() == {"status": "OK"}


def test_healthz_checks_database_and_storage(target: Target, client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert checks["database"] == "ok"
    if target.data_dir is not None:  # one process with every role: it checks its storage too
        assert checks["storage"] == "ok"
    # The failing side: tests/embedded/test_storage_down.py (503 when the folder is unwritable)
    # and tests/stack/test_faults.py (database and MinIO outages).


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_and_uploads(
    target: Target, client: httpx.Client, account: Account
) -> None:
    if target.data_dir is None:
        # Behind a gateway each replica counts its own requests and /metrics reaches one of
        # them: tests/stack/test_storage.py sums the replicas' deltas instead.
        pytest.skip("exact counts need a single instance")
    before = metric_samples(client.get("/metrics").text)
    stored_bytes = 0
    for i in range(3):
        r = client.post("/v1/upload", content=images.jpeg(32, 32, seed=i), headers=account.auth)
        assert r.status_code == 201
        stored_bytes += r.json()["bytes"]
    received_bytes = sum(len(images.jpeg(32, 32, seed=i)) for i in range(3))
    for _ in range(2):
        assert (
            client.post("/v1/upload", content=b"not an image", headers=account.auth).status_code
            == 415
        )
    bad = client.post("/v1/token", json={"login": account.login, "password": "wrong" * 4})
    assert bad.status_code == 401
    good = client.post("/v1/token", json={"login": account.login, "password": account.password})
    assert good.status_code == 200
    after = metric_samples(client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    upload = {"route": "/v1/upload", "method": "POST"}
    assert delta("imagegate_http_requests_total", **upload, status="201") == 3
    assert delta("imagegate_http_requests_total", **upload, status="415") == 2
    assert delta("imagegate_http_request_duration_seconds_count", **upload) == 5
    assert delta("imagegate_http_request_duration_seconds_bucket", **upload, le="+Inf") == 5
    assert delta("imagegate_uploads_total", outcome="stored") == 3
    assert delta("imagegate_uploads_total", outcome="415") == 2
    assert delta("imagegate_upload_stored_bytes_total") == stored_bytes
    assert delta("imagegate_upload_received_bytes_total") == received_bytes
    assert delta("imagegate_logins_total", outcome="failed") == 1
    assert delta("imagegate_logins_total", outcome="ok") == 1
    assert delta("imagegate_logins_total", outcome="throttled") == 0


def test_openapi_describes_every_route(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/v1/register",
        "/v1/user",
        "/v1/token",
        "/v1/token/validation",
        "/v1/upload",
        "/images/{filename}",
        "/v1/user/{filename}",
        "/v1/images",
        "/v1/images/{filename}",
        "/.well-known/jwks.json",
        "/status",
        "/healthz",
        "/metrics",
    ]:
        assert path in paths, path
    assert client.get("/docs").status_code == 200


def test_openapi_marks_bearer_routes(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    bearer = [{"HTTPBearer": []}]
    for path, method in [
        ("/v1/user", "get"),
        ("/v1/token/validation", "get"),
        ("/v1/upload", "post"),
        ("/v1/images", "get"),
        ("/v1/images/{filename}", "delete"),
        ("/v1/user/{filename}", "get"),
        ("/v1/user/{filename}", "head"),
    ]:
        assert doc["paths"][path][method].get("security") == bearer, (method, path)
    for path, method in [
        ("/v1/token", "post"),
        ("/images/{filename}", "get"),
        ("/images/{filename}", "head"),
    ]:
        assert "security" not in doc["paths"][path][method], (method, path)


def test_every_route_marked_bearer_demands_a_token(client: httpx.Client) -> None:
    """The OpenAPI mark and the check are declared apart on the hottest routes: tie them."""
    paths = client.get("/openapi.json").json()["paths"]
    name = "21f2e729-7af7-4607-b6ca-c313b27985ae.jpg"
    marked = [
        (method, path.replace("{filename}", name))
        for path, item in paths.items()
        for method, op in item.items()
        if op.get("security")
    ]
    assert len(marked) >= 7, marked
    for method, path in marked:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)


def test_openapi_operation_ids_are_unique(client: httpx.Client) -> None:
    """Client generators name methods after operation ids: GET and HEAD must not share one."""
    paths = client.get("/openapi.json").json()["paths"]
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert "head" in paths["/images/{filename}"] and "head" in paths["/v1/user/{filename}"]


def test_errors_are_json(client: httpx.Client) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found"}
    r = client.put("/v1/token")
    assert r.status_code == 405
    assert r.json()["error"]


def test_json_bodies_are_size_limited(client: httpx.Client) -> None:
    big = b'{"login": "' + b"a" * 100_000 + b'", "password": "x"}'
    r = client.post("/v1/token", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    assert (
        client.get("/status", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"]
        == "abc-123"
    )
    made = client.get("/status", headers={"X-Request-Id": "bad id <script>"}).headers[
        "X-Request-Id"
    ]
    assert made != "bad id" and len(made) == 32
