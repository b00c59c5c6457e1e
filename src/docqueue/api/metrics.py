"""Prometheus metrics of one app, in its own registry: requests by route, jobs submitted, queue depth."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from docqueue.store import JobStore

log = logging.getLogger("docqueue.api")

#: Buckets for request latency: long-polls and uploads run for seconds, plain reads for milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class QueueCollector(Collector):
    """Reads queue depth from the store at scrape time, so it is never stale."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        """Jobs per queue and state, the oldest queued job's age, jobs finished in the last minute."""
        try:
            stats = self.store.stats()
        except Exception:
            log.warning("the job store did not answer the metrics scrape", exc_info=True)
            return
        jobs = GaugeMetricFamily(
            "docqueue_jobs", "Jobs in the store by queue and state.", labels=["queue", "state"]
        )
        for queue, per_state in sorted(stats.counts.items()):
            for state, count in sorted(per_state.items()):
                jobs.add_metric([queue, state], count)
        yield jobs
        yield GaugeMetricFamily(
            "docqueue_oldest_queued_job_age_seconds",
            "Seconds the oldest queued job has waited (0 when none waits).",
            value=stats.oldest_queued_age or 0.0,
        )
        yield GaugeMetricFamily(
            "docqueue_jobs_finished_last_minute",
            "Jobs that finished (in any way) in the last minute.",
            value=stats.finished_last_minute,
        )


class Metrics:
    """The metrics of one app; several apps in one process keep separate registries."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        # Under several API processes (`docqueue serve --api-processes`), each process writes its
        # counts to files in a shared folder and a scrape reads them all; the metrics must then
        # not also report this process's own counts.
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        own = None if shared else self.registry
        self.requests = Counter(
            "docqueue_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "docqueue_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.submitted = Counter(
            "docqueue_jobs_submitted",
            "Jobs accepted by the API (idempotent replays not counted), by operation.",
            ["operation"],
            registry=own,
        )
        if shared:
            MultiProcessCollector(self.registry, path=shared)  # type: ignore[no-untyped-call]
        self.registry.register(QueueCollector(store))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
