"""Every Prometheus metric the contract names, declared once.

Steps never import prometheus_client: the server and the sources record here.
With ``--workers N`` each worker process writes to a shared multiprocess
directory (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before workers start)
and the admin server aggregates them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Sub-millisecond resolution: a Check normally takes 50-500 µs.
CHECK_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

DECISIONS = Counter(
    "abuse_sidecar_decisions_total",
    "Check decisions by policy, decision (allow|deny) and reason (empty on allow).",
    ["policy", "decision", "reason"],
)
CHECK_DURATION = Histogram(
    "abuse_sidecar_check_duration_seconds",
    "Time from receiving a CheckRequest to answering it.",
    buckets=CHECK_BUCKETS,
)
STORE_ERRORS = Counter(
    "abuse_sidecar_store_errors_total",
    "Failed or timed-out calls to a shared store.",
    ["store"],
)
POLICIES = Gauge(
    "abuse_sidecar_policies",
    "Policies by state: ready, or invalid (serving the last good version if any).",
    ["state"],
    multiprocess_mode="liveall",
)
COHORT_MEMBERS = Gauge(
    "abuse_sidecar_cohort_members",
    "Keys currently members of a cohort.",
    ["policy", "cohort"],
    multiprocess_mode="livemax",
)

NOTIFICATIONS = Counter(
    "abuse_sidecar_notifications_total",
    "Cohort notifications by channel (webhook|email) and outcome "
    "(delivered|retried|failed|dropped: queue full).",
    ["channel", "outcome"],
)
ACCESS_LOG_ENTRIES = Counter(
    "abuse_sidecar_access_log_entries_total",
    "Envoy access-log entries by outcome: counted (by a response cohort), ignored "
    "(no policy or no cohort matched), dropped (the store failed under failureMode closed).",
    ["outcome"],
)


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition (aggregated over worker processes)."""
    content_type = "text/plain; version=0.0.4; charset=utf-8"
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), content_type
    return generate_latest(), content_type
