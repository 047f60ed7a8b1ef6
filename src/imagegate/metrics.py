"""Prometheus metrics, one registry per app so that tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Anything else a client sends is counted as "other": label values must stay a small set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagegate_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagegate_http_request_duration_seconds",
            "Time to the end of the response, by route template",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.uploads = Counter(
            "imagegate_uploads_total",
            "Uploads by outcome (stored, or the HTTP status of the rejection)",
            ["outcome"],
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "imagegate_upload_received_bytes_total",
            "Image bytes received in accepted uploads",
            registry=self.registry,
        )
        self.bytes_stored = Counter(
            "imagegate_upload_stored_bytes_total",
            "Image bytes written to storage after compression",
            registry=self.registry,
        )
        self.logins = Counter(
            "imagegate_logins_total",
            "Login attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        # Labelled children by (route, method, status): prometheus_client's labels() takes a
        # lock and validates on every call, a visible share of a fast request's time.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its duration under its route template."""
        key = (route, method if method in _METHODS else "other", status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(key[0], key[1], str(status)),
                self.latency.labels(key[0], key[1]),
            )
        children[0].inc()
        children[1].observe(seconds)
