"""Prometheus metrics, one registry per app so that tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.variant_jobs = Counter(
            "imagegate_variant_jobs_total",
            "Variant jobs run (one original decoded), by trigger: upload (the presets after an "
            "upload), on_demand (a missing variant asked for), rebuild",
            ["trigger"],
            registry=self.registry,
        )
        self.variants_paused = Counter(
            "imagegate_variant_workers_paused_seconds_total",
            "Time the variant workers were stopped to give uploads the machine",
            registry=self.registry,
        )
        self.variants_made = Counter(
            "imagegate_variants_made_total",
            "Variant files made and stored",
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
        # Events on Kafka (events/relay.py, events/worker.py)
        self.events_published = Counter(
            "imagegate_events_published_total",
            "Events the relay published to Kafka (delivery acknowledged by all in-sync replicas)",
            ["topic"],
            registry=self.registry,
        )
        self.relay_batch_seconds = Histogram(
            "imagegate_relay_batch_duration_seconds",
            "One relay batch: read the outbox, produce, wait for every acknowledgement, mark",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.relay_active = Gauge(
            "imagegate_relay_active",
            "1 while this relay holds the lease (the one that publishes), else 0",
            registry=self.registry,
        )
        self.relay_in_flight = Gauge(
            "imagegate_relay_in_flight",
            "Events of the current batch produced and not yet acknowledged (stuck while the "
            "brokers are away)",
            registry=self.registry,
        )
        self.events_poison = Counter(
            "imagegate_events_poison_total",
            "Kafka messages the worker could not parse as events: logged and skipped",
            ["topic"],
            registry=self.registry,
        )
        self.events_handled = Counter(
            "imagegate_events_handled_total",
            "Events run through their handlers, by type and outcome (ok or error: retried)",
            ["type", "outcome"],
            registry=self.registry,
        )
        # Set from the outbox table when /metrics is scraped (see ops.metrics).
        self.outbox_depth = Gauge(
            "imagegate_outbox_depth",
            "Events committed but not yet published (relay) or handled (inline dispatcher)",
            registry=self.registry,
        )
        self.outbox_oldest_age = Gauge(
            "imagegate_outbox_oldest_age_seconds",
            "Age of the oldest unpublished event (0 when there is none)",
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
