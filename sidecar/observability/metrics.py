"""Every Prometheus metric the contract names, declared once.

Steps never import prometheus_client: the server and the sources record here.
With ``--workers N`` each worker process writes to a shared multiprocess
directory (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before workers start)
and the admin server aggregates them. Gauges say how they combine across
processes (``multiprocess_mode``); the files of workers that died are reaped at
each scrape (their counters keep counting, their live gauges go), and the
supervisor clears files left by an earlier run before it starts workers (a
reused directory, e.g. an emptyDir, would otherwise mix in stale pids).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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
    # Every process loads the same sources; the latest value written is the truth
    # (liveall would add a pid label and one series per process).
    multiprocess_mode="livemostrecent",
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


SPANS_EXPORTED = Counter(
    "abuse_sidecar_trace_spans_exported_total",
    "Spans accepted by the OTLP collector (--otlp-endpoint).",
)
SPANS_DROPPED = Counter(
    "abuse_sidecar_trace_spans_dropped_total",
    "Spans not exported: queue_full (collector too slow or down), export_failed.",
    ["reason"],
)

# prometheus_client's file names: counter_<pid>.db, histogram_<pid>.db, gauge_<mode>_<pid>.db
_DB_FILE = re.compile(r"^(?P<kind>[a-z]+(?:_[a-z]+)?)_(?P<pid>\d+)\.db$")


def _multiprocess_dir() -> Path | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def _process_alive(pid: int) -> bool:
    """Running, or at least not dead: a worker killed but not yet waited for by the
    supervisor is a zombie, which ``kill(pid, 0)`` still finds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel the portable way
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    return state not in ("Z", "X")


def _db_files(directory: Path) -> list[tuple[Path, str, int]]:
    found = []
    for path in directory.iterdir():
        match = _DB_FILE.match(path.name)
        if match:
            found.append((path, match["kind"], int(match["pid"])))
    return found


def reap_dead_processes() -> list[int]:
    """Forget the live gauges of worker processes that exited; their counters and
    histograms stay (what they counted did happen). Returns the pids reaped."""
    directory = _multiprocess_dir()
    if directory is None or not directory.is_dir():
        return []
    dead = sorted(
        {
            pid
            for _, kind, pid in _db_files(directory)
            if kind.startswith("gauge_live") and not _process_alive(pid)
        }
    )
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return dead


def clear_stale_files() -> int:
    """Remove metric files of other processes, left by an earlier run in a reused
    directory (the supervisor calls this before starting workers). Returns the count."""
    directory = _multiprocess_dir()
    if directory is None or not directory.is_dir():
        return 0
    own = os.getpid()
    removed = 0
    for path, _, pid in _db_files(directory):
        if pid != own:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition (aggregated over worker processes)."""
    content_type = "text/plain; version=0.0.4; charset=utf-8"
    if _multiprocess_dir() is not None:
        reap_dead_processes()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), content_type
    return generate_latest(), content_type
