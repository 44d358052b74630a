"""Benchmark: real Envoy + wrk on loopback, the sidecar against a do-nothing authorizer.

    .venv/bin/python bench/run.py [--scenario honeypots] [--workers N] [--rounds 2]
                                  [--duration 10] [--threads 2] [--connections 50]

Each round runs, one after the other and each with a fresh Envoy:

- **alone**: Envoy without ext_authz (the reference for added latency);
- **A**: Envoy + the do-nothing ext_authz server (grpc.aio on uvloop, always OK),
  as many processes as the sidecar has workers: the ceiling for any Python
  authorizer on this machine;
- **AR** (scenarios that use Redis): the do-nothing server making one plain
  redis-py ``GET`` per Check: the ceiling for any authorizer that needs Redis on
  every request;
- **B**: Envoy + ``abuse-sidecar serve`` with the scenario's policies.

so the configurations alternate (alone A B alone A B ...) and drift of the machine
(other load, thermal) spreads over all of them. Every configuration gets the
same phases: a short warm-up (discarded), a **load phase** (``--threads``,
``--connections``: throughput, and latency under saturation) and a **latency
phase** (one connection, one request at a time: what a single request costs).
By default Envoy answers 200 itself (``direct_response``) so no Python upstream
caps the figures; ``--upstream python`` puts the echoing test upstream behind it.

The report (stdout, and a section of ``docs/performance.md`` unless
``--no-write``) gives requests/s, p50 and p99 per configuration, B/A throughput
per round, the p50 the sidecar adds to Envoy alone and to A, CPU per request
of Envoy and of the authorizer, and how Envoy spread checks over the workers
(``rq_total`` per endpoint of the ``abuse_sidecar`` cluster); with Redis, B/AR
throughput and the Redis commands per request of AR and B during the load phase
(``INFO commandstats`` before and after: EVALSHA per Check). Raw figures go to
``bench/results/<time>/results.json``, process logs next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable (tests.harness is not installed).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scenarios import SCENARIOS, Scenario, request_lua
from tests.harness.envoy import EnvoyProcess, envoy_binary, start_local_envoy
from tests.harness.noop_authz import NoopAuthzProcess, start_noop_authz
from tests.harness.ports import LOOPBACK, consecutive_free_ports, free_port
from tests.harness.processes import (
    ManagedProcess,
    start_process,
    wait_for_tcp,
)
from tests.harness.sidecar import SidecarProcess, start_sidecar
from tests.harness.upstream import UpstreamServer

REPO = Path(__file__).resolve().parents[1]
PERFORMANCE_DOC = REPO / "docs" / "performance.md"
RESULTS_DIR = REPO / "bench" / "results"

ALONE, CEILING, SHARED_PORT, SIDECAR, TRACED = "alone", "A", "A1", "B", "T"
LABELS = {
    ALONE: "Envoy alone (no ext_authz)",
    CEILING: "A: Envoy + do-nothing authorizer",
    SHARED_PORT: "A1: do-nothing, one SO_REUSEPORT port",
    SIDECAR: "B: Envoy + abuse-sidecar",
    TRACED: "T: B + traces to OTLP, 100% sampled",
}
REDIS_CEILING = "AR"
LABELS[REDIS_CEILING] = "AR: do-nothing + one Redis GET per Check"
REDIS_THROUGHPUT_TARGET = 0.90
"""Issue 5: B/AR, the sidecar's Redis work against one plain Redis call per request."""
TRACING_COST_TARGET = 0.15
"""Issue 9: tracing at 100% sampling costs at most 15% of B's throughput."""
ADDED_P50_TARGET_MS = 1.0
NOISE_CORES = 0.25
"""Other processes' CPU (in cores) during a load phase above which a run is flagged."""

# wrk's done() callback, appended to every script: one parseable line.
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d "
    .. "timeout=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f max_us=%d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""
_RESULT_LINE = re.compile(r"^BENCH_RESULT (.*)$", re.MULTILINE)


# -- wrk ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(output: str) -> WrkResult:
    """The ``BENCH_RESULT`` line our ``done()`` wrote."""
    match = _RESULT_LINE.search(output)
    if match is None:
        raise RuntimeError(f"wrk printed no BENCH_RESULT line:\n{output[-2000:]}")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    number = {key: float(value) for key, value in fields.items()}
    return WrkResult(
        requests=int(number["requests"]),
        seconds=number["duration_us"] / 1e6,
        errors=int(number["connect"] + number["read"] + number["write"] + number["timeout"]),
        non_2xx=int(number["status"]),
        p50_ms=number["p50_us"] / 1000,
        p90_ms=number["p90_us"] / 1000,
        p99_ms=number["p99_us"] / 1000,
        mean_ms=number["mean_us"] / 1000,
        max_ms=number["max_us"] / 1000,
    )


def run_wrk(url: str, script: Path, *, threads: int, connections: int, seconds: float) -> WrkResult:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# -- CPU accounting ---------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(session_ids: set[int]) -> float:
    """User + system CPU of every live process in these sessions (a sidecar and its workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces) start at ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) in session_ids:  # field 6: session id
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / _CLOCK_TICKS


# -- one measured configuration ------------------------------------------------------


@dataclass
class Measurement:
    config: str
    round: int
    load: WrkResult
    latency: WrkResult
    envoy_cpu_us_per_request: float
    authorizer_cpu_us_per_request: float | None
    other_load_cores: float
    """CPU used by processes outside the benchmark during the load phase, in cores."""
    per_endpoint: dict[str, int] = field(default_factory=dict)
    process_cpu_shares: list[float] = field(default_factory=list)
    """Each authorizer process's share of the authorizer CPU (do-nothing processes)."""
    decisions: dict[str, float] = field(default_factory=dict)
    redis_calls_per_request: dict[str, float] = field(default_factory=dict)
    """Redis commands (``INFO commandstats``) per request during the load phase."""
    redis_cpu_us_per_request: float | None = None
    """CPU of the redis-server process per request during the load phase."""
    redis_reads_per_request: float | None = None
    """Socket reads redis-server made per request (``INFO stats``): below 1 when
    the Checks of several requests arrive in one write (coalesced)."""


@dataclass(frozen=True, slots=True)
class Settings:
    scenario: Scenario
    rounds: int
    duration: float
    warmup: float
    latency_duration: float
    threads: int
    connections: int
    workers: int
    ceiling_processes: int
    envoy_concurrency: int
    upstream: str
    access_log: bool
    include_alone: bool
    reuseport_contrast: bool
    run_dir: Path
    tracing: bool = False
    """Also run T: the sidecar exporting every Check's spans to an OTLP collector."""


@dataclass
class Authorizer:
    """The process(es) Envoy calls in A or B."""

    ports: list[int]
    sessions: set[int]
    """Session ids of the processes (a sidecar's workers share its session)."""
    separate: list[int] = field(default_factory=list)
    """Session of each separately started process, for the CPU split between them."""
    metrics: Callable[[], str] | None = None


@contextmanager
def _ceiling(
    settings: Settings, log_dir: Path, *, shared_port: bool, redis_url: str | None = None
) -> Iterator[Authorizer]:
    """The do-nothing processes: one port each, or all on one port (SO_REUSEPORT);
    with ``redis_url`` each makes one Redis GET per Check."""
    count = settings.ceiling_processes
    first = consecutive_free_ports(1 if shared_port else count)
    started: list[NoopAuthzProcess] = []
    try:
        for i in range(count):
            port = first if shared_port else first + i
            started.append(start_noop_authz(log_dir=log_dir, port=port, redis_url=redis_url))
        pids = [p.process.pid for p in started]
        ports = sorted({p.port for p in started})
        yield Authorizer(ports=ports, sessions=set(pids), separate=pids)
    finally:
        for process in started:
            process.stop()


@contextmanager
def _collector(log_dir: Path) -> Iterator[str]:
    """A real OTLP/gRPC collector in its own process (its CPU is not the sidecar's)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.harness.otlp_receiver", "--port", str(port)]
    process = start_process("otlp-collector", argv, log_dir=log_dir, cwd=REPO)
    try:
        wait_for_tcp(LOOPBACK, port, process=process)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        process.stop()


@contextmanager
def _sidecar(
    settings: Settings, log_dir: Path, redis_url: str | None, *, traced: bool = False
) -> Iterator[Authorizer]:
    scenario = settings.scenario
    with contextlib.ExitStack() as stack:
        extra_args = list(scenario.sidecar_args)
        if traced:
            extra_args += ["--otlp-endpoint", stack.enter_context(_collector(log_dir))]
        sidecar: SidecarProcess = start_sidecar(
            log_dir=log_dir,
            policies=scenario.policies,
            workers=settings.workers,
            default_policy=scenario.default_policy,
            redis_url=redis_url,
            extra_args=extra_args,
            cwd=REPO,
        )
        stack.callback(sidecar.stop)
        yield Authorizer(sidecar.grpc_ports, {sidecar.process.pid}, metrics=sidecar.metrics)


def redis_info(redis_url: str, section: str) -> Any:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return client.info(section)
    finally:
        client.close()


def redis_session(redis_url: str) -> set[int]:
    """The redis-server's session (started by ``start_process``: its own, id = its pid),
    so that its CPU is accounted for and not taken for other load."""
    return {int(redis_info(redis_url, "server")["process_id"])}


def redis_command_calls(redis_url: str) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    stats = redis_info(redis_url, "commandstats")
    return {
        name.removeprefix("cmdstat_"): int(values["calls"])
        for name, values in stats.items()
        if name.startswith("cmdstat_")
    }


def redis_reads(redis_url: str) -> int:
    """Socket reads redis-server has processed since it started (``INFO stats``)."""
    return int(redis_info(redis_url, "stats")["total_reads_processed"])


def _calls_per_request(
    before: dict[str, int], after: dict[str, int], requests: int
) -> dict[str, float]:
    """Commands the load phase caused, per request (the INFO calls themselves left out)."""
    return {
        name: (calls - before.get(name, 0)) / requests
        for name, calls in sorted(after.items())
        if name != "info" and calls > before.get(name, 0)
    }


_SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro")
_CONNECTION_SETUP = ("hello", "ping", "client", "select", "auth")


def _redis_calls_text(calls: dict[str, float]) -> str:
    """Commands per request as the report names them. ``INFO commandstats`` also counts
    the commands a script runs; they are shown apart from the script calls (the
    round trips)."""
    shown = {n: v for n, v in calls.items() if n not in _CONNECTION_SETUP and v >= 0.0005}
    scripts = {n: v for n, v in shown.items() if n in _SCRIPT_CALLS}
    others = {n: v for n, v in shown.items() if n not in _SCRIPT_CALLS}

    def listed(group: dict[str, float]) -> str:
        return ", ".join(f"{name.upper()} {value:.3f}" for name, value in group.items())

    if not scripts:
        return listed(others) or "none"
    inside = f" (run inside the script: {listed(others)})" if others else ""
    return listed(scripts) + inside


def _decisions(metrics_text: str) -> dict[str, float]:
    """``abuse_sidecar_decisions_total`` by ``policy/decision/reason``."""
    found: dict[str, float] = {}
    pattern = re.compile(r"^abuse_sidecar_decisions_total\{([^}]*)\} (\S+)$", re.MULTILINE)
    for labels, value in pattern.findall(metrics_text):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = "/".join(
            part
            for part in (parsed.get("policy", ""), parsed.get("decision", ""), parsed.get("reason"))
            if part
        )
        found[key] = found.get(key, 0.0) + float(value)
    return found


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far, by whom; two samples bracket a load phase."""

    wall: float
    machine: float
    envoy: float
    authorizer: float
    ours: float
    """This process and its finished children (wrk)."""


def _machine_busy_seconds() -> float:
    """CPU time the machine spent on processes (and lost to other VMs: steal).

    Interrupt and softirq time is left out: loopback networking is accounted
    there, not to the processes that cause it.
    """
    # First line of /proc/stat: cpu user nice system idle iowait irq softirq steal ...
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields
    return (user + nice + system + steal) / _CLOCK_TICKS


def _cpu_sample(envoy: set[int], authorizer: set[int]) -> CpuSample:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSample(
        wall=time.monotonic(),
        machine=_machine_busy_seconds(),
        envoy=session_cpu_seconds(envoy),
        authorizer=session_cpu_seconds(authorizer) if authorizer else 0.0,
        ours=time.process_time() + children.ru_utime + children.ru_stime,
    )


def _measure(
    *,
    config: str,
    round_no: int,
    settings: Settings,
    envoy: EnvoyProcess,
    authorizer: Authorizer | None,
    script: Path,
    redis_url: str | None = None,
) -> Measurement:
    url = envoy.base_url
    if authorizer is not None:
        envoy.wait_for_healthy_endpoints()
    load_options = {"threads": settings.threads, "connections": settings.connections}
    run_wrk(url, script, seconds=settings.warmup, **load_options)

    endpoints_before = envoy.requests_per_endpoint() if authorizer else {}
    sessions = ({envoy.process.pid}, authorizer.sessions if authorizer else set())
    separate = authorizer.separate if authorizer else []
    redis = redis_session(redis_url) if redis_url else set()
    before = _cpu_sample(*sessions)
    separate_before = [session_cpu_seconds({pid}) for pid in separate]
    redis_before = redis_command_calls(redis_url) if redis_url else {}
    reads_before = redis_reads(redis_url) if redis_url else 0
    redis_cpu_before = session_cpu_seconds(redis)
    load = run_wrk(url, script, seconds=settings.duration, **load_options)
    after = _cpu_sample(*sessions)
    redis_cpu = session_cpu_seconds(redis) - redis_cpu_before
    redis_after = redis_command_calls(redis_url) if redis_url else {}
    reads = redis_reads(redis_url) - reads_before if redis_url else 0
    separate_used = [
        session_cpu_seconds({pid}) - used
        for pid, used in zip(separate, separate_before, strict=True)
    ]

    requests = max(load.requests, 1)
    authz_us: float | None = None
    per_endpoint: dict[str, int] = {}
    if authorizer is not None:
        authz_us = (after.authorizer - before.authorizer) / requests * 1e6
        endpoints_after = envoy.requests_per_endpoint()
        per_endpoint = {h: n - endpoints_before.get(h, 0) for h, n in endpoints_after.items()}
    accounted = redis_cpu + sum(
        getattr(after, name) - getattr(before, name) for name in ("envoy", "authorizer", "ours")
    )
    other = (after.machine - before.machine - accounted) / (after.wall - before.wall)
    latency = run_wrk(url, script, threads=1, connections=1, seconds=settings.latency_duration)
    decisions = _decisions(authorizer.metrics()) if authorizer and authorizer.metrics else {}
    return Measurement(
        config=config,
        round=round_no,
        load=load,
        latency=latency,
        envoy_cpu_us_per_request=(after.envoy - before.envoy) / requests * 1e6,
        authorizer_cpu_us_per_request=authz_us,
        other_load_cores=max(other, 0.0),
        per_endpoint=per_endpoint,
        process_cpu_shares=[used / (sum(separate_used) or 1) for used in separate_used],
        decisions=decisions,
        redis_calls_per_request=_calls_per_request(redis_before, redis_after, requests),
        redis_cpu_us_per_request=redis_cpu / requests * 1e6 if redis_url else None,
        redis_reads_per_request=reads / requests if redis_url else None,
    )


def _envoy(
    settings: Settings, log_dir: Path, ports: Sequence[int], upstream: UpstreamServer | None
) -> EnvoyProcess:
    return start_local_envoy(
        sidecar_ports=ports,
        upstream_port=upstream.port if upstream else None,
        log_dir=log_dir,
        concurrency=settings.envoy_concurrency,
        ext_authz=bool(ports),
        access_log=settings.access_log,
    )


def _run_config(
    *,
    config: str,
    round_no: int,
    settings: Settings,
    script: Path,
    upstream: UpstreamServer | None,
    redis_url: str | None,
) -> Measurement:
    log_dir = settings.run_dir / "logs" / f"round{round_no}-{config}"
    if config == ALONE:
        envoy = _envoy(settings, log_dir, [], upstream)
        try:
            return _measure(
                config=config,
                round_no=round_no,
                settings=settings,
                envoy=envoy,
                authorizer=None,
                script=script,
            )
        finally:
            envoy.stop()
    if config in (CEILING, SHARED_PORT, REDIS_CEILING):
        authorizer_context = _ceiling(
            settings,
            log_dir,
            shared_port=config == SHARED_PORT,
            redis_url=redis_url if config == REDIS_CEILING else None,
        )
    else:
        authorizer_context = _sidecar(settings, log_dir, redis_url, traced=config == TRACED)
    with authorizer_context as authorizer:
        envoy = _envoy(settings, log_dir, authorizer.ports, upstream)
        try:
            return _measure(
                config=config,
                round_no=round_no,
                settings=settings,
                envoy=envoy,
                authorizer=authorizer,
                script=script,
                redis_url=redis_url,
            )
        finally:
            envoy.stop()


@contextmanager
def _redis(settings: Settings) -> Iterator[str | None]:
    if not settings.scenario.needs_redis:
        yield None
        return
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process: ManagedProcess = start_process("redis", argv, log_dir=settings.run_dir / "logs")
    try:
        wait_for_tcp(LOOPBACK, port, process=process)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        process.stop()


# -- report -----------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _by_config(measurements: Sequence[Measurement], config: str) -> list[Measurement]:
    return [m for m in measurements if m.config == config]


def summarise(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """Means per configuration, and the ratios the issue's targets are stated in."""
    summary: dict[str, Any] = {"configs": {}}
    for config in (ALONE, CEILING, SHARED_PORT, REDIS_CEILING, SIDECAR, TRACED):
        runs = _by_config(measurements, config)
        if not runs:
            continue
        authz = [a for m in runs if (a := m.authorizer_cpu_us_per_request) is not None]
        summary["configs"][config] = {
            "rps": _mean([m.load.rps for m in runs]),
            "load_p50_ms": _mean([m.load.p50_ms for m in runs]),
            "load_p99_ms": _mean([m.load.p99_ms for m in runs]),
            "latency_p50_ms": _mean([m.latency.p50_ms for m in runs]),
            "latency_p99_ms": _mean([m.latency.p99_ms for m in runs]),
            "envoy_cpu_us": _mean([m.envoy_cpu_us_per_request for m in runs]),
            "authorizer_cpu_us": _mean(authz) if authz else None,
            "other_load_cores": _mean([m.other_load_cores for m in runs]),
            "errors": sum(m.load.errors + m.latency.errors for m in runs),
            "non_2xx": sum(m.load.non_2xx + m.latency.non_2xx for m in runs),
            "redis_cpu_us": _mean(
                [r for m in runs if (r := m.redis_cpu_us_per_request) is not None]
            ),
            "redis_reads_per_request": _mean(
                [r for m in runs if (r := m.redis_reads_per_request) is not None]
            ),
            "redis_calls_per_request": {
                name: _mean([m.redis_calls_per_request.get(name, 0.0) for m in runs])
                for name in sorted({n for m in runs for n in m.redis_calls_per_request})
            },
        }
    pairs = [
        (a, b)
        for a in _by_config(measurements, CEILING)
        for b in _by_config(measurements, SIDECAR)
        if a.round == b.round
    ]
    if pairs:
        ratios = [b.load.rps / a.load.rps for a, b in pairs]
        summary["throughput_ratio_per_round"] = ratios
        summary["throughput_ratio"] = _mean(ratios)
        # Rounds in which neither A nor B shared the machine with other work.
        quiet = [
            (a, b) for a, b in pairs if max(a.other_load_cores, b.other_load_cores) <= NOISE_CORES
        ]
        summary["quiet_rounds"] = [b.round for _, b in quiet]
        if quiet:
            summary["throughput_ratio_quiet"] = _mean([b.load.rps / a.load.rps for a, b in quiet])
        summary["p50_added_vs_ceiling_ms"] = _mean(
            [b.latency.p50_ms - a.latency.p50_ms for a, b in pairs]
        )
    redis_pairs = [
        (r, b)
        for r in _by_config(measurements, REDIS_CEILING)
        for b in _by_config(measurements, SIDECAR)
        if r.round == b.round
    ]
    if redis_pairs:
        summary["redis_ratio_per_round"] = [b.load.rps / r.load.rps for r, b in redis_pairs]
        summary["redis_ratio"] = _mean(summary["redis_ratio_per_round"])
    traced_pairs = [
        (b, t)
        for b in _by_config(measurements, SIDECAR)
        for t in _by_config(measurements, TRACED)
        if b.round == t.round
    ]
    if traced_pairs:
        summary["tracing_ratio_per_round"] = [t.load.rps / b.load.rps for b, t in traced_pairs]
        summary["tracing_ratio"] = _mean(summary["tracing_ratio_per_round"])
        quiet_traced = [
            (b, t)
            for b, t in traced_pairs
            if max(b.other_load_cores, t.other_load_cores) <= NOISE_CORES
        ]
        summary["tracing_quiet_rounds"] = [t.round for _, t in quiet_traced]
        if quiet_traced:
            summary["tracing_ratio_quiet"] = _mean(
                [t.load.rps / b.load.rps for b, t in quiet_traced]
            )
        # CPU per request moves less with other load than throughput does.
        cpu_pairs = [
            (b.authorizer_cpu_us_per_request, t.authorizer_cpu_us_per_request)
            for b, t in traced_pairs
        ]
        summary["tracing_cpu_added"] = _mean([t / b - 1 for b, t in cpu_pairs if b and t])
    alone = summary["configs"].get(ALONE)
    sidecar = summary["configs"].get(SIDECAR)
    if alone and sidecar:
        summary["p50_added_vs_envoy_ms"] = sidecar["latency_p50_ms"] - alone["latency_p50_ms"]
    split: dict[str, int] = {}
    for m in _by_config(measurements, SIDECAR):
        by_port = sorted(m.per_endpoint.items(), key=lambda item: int(item[0].rsplit(":", 1)[1]))
        for index, (_, count) in enumerate(by_port):
            split[f"worker {index}"] = split.get(f"worker {index}", 0) + count
    summary["sidecar_split"] = split
    for config, name in ((CEILING, "ceiling_cpu_shares"), (SHARED_PORT, "shared_port_cpu_shares")):
        summary[name] = [
            [round(x, 3) for x in m.process_cpu_shares] for m in _by_config(measurements, config)
        ]
    decisions: dict[str, float] = {}
    for m in _by_config(measurements, SIDECAR):
        for key, value in m.decisions.items():
            decisions[key] = max(decisions.get(key, 0.0), value)
    summary["decisions"] = decisions
    return summary


def _shares(rounds: list[list[float]]) -> str:
    return "; ".join("/".join(f"{x:.0%}" for x in shares) for shares in rounds)


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy_version = subprocess.run(
        [str(envoy_binary()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    version_match = re.search(r"/(\d+\.\d+\.\d+)/", envoy_version)
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, Envoy {version_match.group(1) if version_match else '?'}"
    )


def render_markdown(settings: Settings, measurements: Sequence[Measurement]) -> str:
    summary = summarise(measurements)
    scenario = settings.scenario
    today = dt.date.today().isoformat()
    lines = [
        f"## {scenario.name}, sidecar `--workers {settings.workers}` ({today})",
        "",
        f"Scenario: {scenario.description}. "
        f"Load phase: wrk {settings.threads} threads, {settings.connections} connections, "
        f"{settings.duration:g} s; latency phase: 1 connection, {settings.latency_duration:g} s. "
        f"Envoy `--concurrency {settings.envoy_concurrency}`, "
        f"{'Envoy answers 200 itself' if settings.upstream == 'direct' else 'Python echo upstream'}, "
        f"access log {'on' if settings.access_log else 'off'}; "
        f"A runs {settings.ceiling_processes} do-nothing process(es). "
        f"{settings.rounds} rounds, each {', '.join(_order(settings))}. "
        f"Means over rounds. Machine: {_machine()}.",
        "",
        "| configuration | requests/s | p50 under load | p99 under load | p50, 1 connection "
        "| p99, 1 connection | Envoy CPU µs/request | authorizer CPU µs/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config, figures in summary["configs"].items():
        authz = figures["authorizer_cpu_us"]
        lines.append(
            f"| {LABELS[config]} | {figures['rps']:,.0f} | {figures['load_p50_ms']:.2f} ms "
            f"| {figures['load_p99_ms']:.2f} ms | {figures['latency_p50_ms']:.3f} ms "
            f"| {figures['latency_p99_ms']:.3f} ms | {figures['envoy_cpu_us']:.0f} "
            f"| {'' if authz is None else f'{authz:.0f}'} |"
        )
    lines.append("")
    if "throughput_ratio" in summary:
        rounds = ", ".join(f"{r:.2f}" for r in summary["throughput_ratio_per_round"])
        quiet_rounds = summary["quiet_rounds"]
        if "throughput_ratio_quiet" in summary:
            # Judge on the rounds the machine was otherwise idle; a busy round
            # slows A and B by different amounts.
            ratio = summary["throughput_ratio_quiet"]
            basis = f"quiet rounds {', '.join(map(str, quiet_rounds))}"
        else:
            ratio = summary["throughput_ratio"]
            basis = "no quiet round: all rounds"
        target = settings.scenario.throughput_target
        verdict = (
            _verdict(ratio >= target)
            if quiet_rounds and target is not None
            else "not judged, the machine was busy in every round"
        )
        lines.append(
            f"- Throughput B/A: **{ratio:.2f}** ({basis}; per round: {rounds})"
            + (f"; target ≥ {target:.2f}: {verdict}." if target is not None else ".")
        )
    if "p50_added_vs_envoy_ms" in summary:
        added = summary["p50_added_vs_envoy_ms"]
        lines.append(
            f"- p50 the sidecar adds to Envoy alone (1 connection): **{added:.3f} ms**; "
            f"target ≤ {ADDED_P50_TARGET_MS:g} ms: {_verdict(added <= ADDED_P50_TARGET_MS)}. "
            f"Compared with A: {summary.get('p50_added_vs_ceiling_ms', float('nan')):+.3f} ms."
        )
    if "redis_ratio" in summary:
        ratio = summary["redis_ratio"]
        rounds = ", ".join(f"{r:.2f}" for r in summary["redis_ratio_per_round"])
        lines.append(
            f"- Throughput B/AR (against one plain Redis call per request): **{ratio:.2f}** "
            f"(per round: {rounds}); target ≥ {REDIS_THROUGHPUT_TARGET:.2f}: "
            f"{_verdict(ratio >= REDIS_THROUGHPUT_TARGET)}."
        )
    redis_users = [
        (LABELS[c].split(":", 1)[0], text, f["redis_cpu_us"], f.get("redis_reads_per_request"))
        for c, f in summary["configs"].items()
        if (text := _redis_calls_text(f["redis_calls_per_request"])) != "none"
    ]
    if redis_users:
        calls = "; ".join(f"{who}: {text}" for who, text, _, _ in redis_users)
        cpu = ", ".join(f"{who} {us:.0f}" for who, _, us, _ in redis_users)
        reads = ", ".join(f"{who} {per:.2f}" for who, _, _, per in redis_users if per is not None)
        lines.append(
            "- Redis commands per request during the load phases (`INFO commandstats` "
            f"before/after): {calls}. redis-server CPU µs/request: {cpu} (counted as the "
            f"benchmark's, not as other load); socket reads per request: {reads} (below 1: "
            "Checks of several requests arrived in one write)."
        )
    if "tracing_ratio" in summary:
        quiet_traced = summary["tracing_quiet_rounds"]
        ratio = summary.get("tracing_ratio_quiet", summary["tracing_ratio"])
        basis = (
            f"quiet rounds {', '.join(map(str, quiet_traced))}"
            if quiet_traced
            else "no quiet round: all rounds"
        )
        rounds = ", ".join(f"{r:.2f}" for r in summary["tracing_ratio_per_round"])
        verdict = (
            _verdict(1 - ratio <= TRACING_COST_TARGET)
            if quiet_traced
            else "not judged, the machine was busy in every round"
        )
        lines.append(
            f"- Tracing at 100% sampling, throughput T/B: **{ratio:.2f}** ({basis}; per round: "
            f"{rounds}), a cost of {1 - ratio:.0%}; sidecar CPU per request "
            f"{summary['tracing_cpu_added']:+.0%}; target cost ≤ {TRACING_COST_TARGET:.0%}: "
            f"{verdict}."
        )
    split = summary["sidecar_split"]
    if split:
        total = sum(split.values()) or 1
        shares = ", ".join(f"{name} {count / total:.0%}" for name, count in split.items())
        lines.append(
            f"- Checks per sidecar worker during the load phases (Envoy `rq_total` per "
            f"endpoint): {shares}."
        )
    if summary["shared_port_cpu_shares"]:
        lines.append(
            f"- {settings.ceiling_processes} do-nothing processes behind one SO_REUSEPORT port "
            f"(A1, one Envoy endpoint) split the work {_shares(summary['shared_port_cpu_shares'])} "
            f"(CPU per process, per round); on one port each (A): "
            f"{_shares(summary['ceiling_cpu_shares'])}. The kernel balances connections, not "
            f"requests, and Envoy opens one HTTP/2 connection per endpoint per Envoy worker."
        )
    if summary["decisions"]:
        decided = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(summary["decisions"].items()))
        lines.append(f"- Sidecar decisions (`abuse_sidecar_decisions_total`): {decided}.")
    busy = {LABELS[c]: f["other_load_cores"] for c, f in summary["configs"].items()}
    noisy = max(busy.values(), default=0.0) > NOISE_CORES
    lines.append(
        f"- {'**Machine busy**: ' if noisy else ''}other processes used "
        + ", ".join(f"{v:.2f}" for v in busy.values())
        + " cores during the load phases ("
        + ", ".join(busy)
        + ")"
        + ("; rerun on a quiet machine before trusting the ratios." if noisy else ".")
    )
    problems = [
        f"{LABELS[c]}: {f['errors']} socket errors, {f['non_2xx']} non-2xx"
        for c, f in summary["configs"].items()
        if f["errors"] or f["non_2xx"]
    ]
    if problems:
        lines.append(f"- **Errors**: {'; '.join(problems)}.")
    lines.append("")
    lines.append(
        "Command: `.venv/bin/python bench/run.py " + " ".join(_command_args(settings)) + "`"
    )
    return "\n".join(lines) + "\n"


def _order(settings: Settings) -> list[str]:
    alone = [ALONE] if settings.include_alone else []
    shared = [SHARED_PORT] if settings.reuseport_contrast else []
    traced = [TRACED] if settings.tracing else []
    redis = [REDIS_CEILING] if settings.scenario.needs_redis else []
    return [*alone, CEILING, *shared, *redis, SIDECAR, *traced]


def _command_args(settings: Settings) -> list[str]:
    args = [
        f"--scenario {settings.scenario.name}",
        f"--workers {settings.workers}",
        f"--rounds {settings.rounds}",
        f"--duration {settings.duration:g}",
        f"--threads {settings.threads}",
        f"--connections {settings.connections}",
    ]
    if settings.upstream != "direct":
        args.append(f"--upstream {settings.upstream}")
    if not settings.access_log:
        args.append("--no-access-log")
    if settings.reuseport_contrast:
        args.append("--reuseport-contrast")
    if settings.tracing:
        args.append("--tracing")
    return args


INTRO = """\
# Performance

How much abuse-sidecar costs in front of an API, measured with real Envoy and
`wrk` on one machine over loopback. Run it with `.venv/bin/python bench/run.py`
(options: `--help`); each run replaces its own section below.

Method:

- **Same machine, same run.** Envoy, wrk and the authorizer share the machine's
  cores, so absolute figures depend on the machine and on what else runs on it.
  The figures that carry over are **ratios to a ceiling measured in the same
  run**: A is Envoy calling a do-nothing Python ext_authz server (grpc.aio on
  uvloop, always OK), the cheapest a Python authorizer can be; B is Envoy calling
  abuse-sidecar. The target is B ≥ 80% of A's throughput and at most 1 ms added
  to Envoy's p50.
- **Alternating runs.** Each round runs Envoy alone, A and B one after the other,
  each with a fresh Envoy and authorizer, so drift of the machine spreads over
  all configurations; B/A is computed per round.
- **Two phases per configuration.** Under load (many connections) Envoy and the
  authorizer saturate the cores: requests/s and tail latency. With one
  connection, one request at a time: the latency a single request pays; the
  difference to Envoy alone is what the sidecar adds.
- Envoy answers 200 itself (`direct_response`), so no application caps the
  figures; the ext_authz filter runs before the route either way.
- **CPU per request** is user + system time of the Envoy process and of the
  authorizer processes during the load phase, divided by the requests served.
- **Other load** is the CPU that processes outside the benchmark used during the
  load phases (machine busy time from `/proc/stat` minus the benchmark's own
  processes; interrupt time left out, since loopback networking is counted
  there). Above 0.25 cores the section says the machine was busy: the ratios
  of such a run are not to be trusted.
- With `--workers N` the sidecar serves on N ports, one Envoy endpoint each:
  Envoy keeps one HTTP/2 connection per endpoint per Envoy worker, so N
  processes behind one SO_REUSEPORT port get at most one connection per Envoy
  worker between them, placed by the kernel's hash (`--reuseport-contrast` runs
  that too, as A1, and shows the CPU split between the processes). The split
  line shows how Envoy spread the checks (`rq_total` per endpoint from
  `/clusters`).
"""


def write_section(document: Path, key: str, section: str) -> None:
    """Insert or replace the section marked ``key`` in ``document``."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{section}{end}\n"
    text = document.read_text() if document.exists() else INTRO
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_text(text)


# -- main ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Envoy + wrk: abuse-sidecar against a do-nothing authorizer, alternating.",
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="honeypots")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (at least 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="load phase, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded warm-up, seconds")
    parser.add_argument("--latency-duration", type=float, default=5.0, help="1-connection phase")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--workers", type=int, default=1, help="sidecar --workers")
    parser.add_argument(
        "--ceiling-processes",
        type=int,
        default=None,
        help="do-nothing processes (default: --workers)",
    )
    parser.add_argument("--envoy-concurrency", type=int, default=2)
    parser.add_argument("--upstream", choices=["direct", "python"], default="direct")
    parser.add_argument(
        "--no-access-log", action="store_true", help="Envoy without the gRPC access log"
    )
    parser.add_argument("--no-alone", action="store_true", help="skip the Envoy-alone reference")
    parser.add_argument(
        "--reuseport-contrast",
        action="store_true",
        help="also run the do-nothing processes behind one SO_REUSEPORT port (A1)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also run T: the sidecar with --otlp-endpoint to a real collector (issue 9)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help=f"do not update {PERFORMANCE_DOC.relative_to(REPO)}"
    )
    parser.add_argument("--output", type=Path, default=PERFORMANCE_DOC)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 2:
        _parser().error("--rounds must be at least 2 (A and B alternate)")
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    run_dir = RESULTS_DIR / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    settings = Settings(
        scenario=SCENARIOS[args.scenario],
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        latency_duration=args.latency_duration,
        threads=args.threads,
        connections=args.connections,
        workers=args.workers,
        ceiling_processes=args.ceiling_processes or args.workers,
        envoy_concurrency=args.envoy_concurrency,
        upstream=args.upstream,
        access_log=not args.no_access_log,
        include_alone=not args.no_alone,
        reuseport_contrast=args.reuseport_contrast,
        run_dir=run_dir,
        tracing=args.tracing,
    )
    run_dir.mkdir(parents=True)
    script = run_dir / "wrk.lua"
    script.write_text(request_lua(settings.scenario) + DONE_LUA)

    measurements: list[Measurement] = []
    upstream = UpstreamServer(free_port()).start() if settings.upstream == "python" else None
    try:
        with _redis(settings) as redis_url:
            for round_no in range(1, settings.rounds + 1):
                for config in _order(settings):
                    started = time.monotonic()
                    m = _run_config(
                        config=config,
                        round_no=round_no,
                        settings=settings,
                        script=script,
                        upstream=upstream,
                        redis_url=redis_url,
                    )
                    measurements.append(m)
                    print(
                        f"round {round_no} {LABELS[config]:<38} {m.load.rps:>9,.0f} req/s  "
                        f"p50 {m.load.p50_ms:6.2f} ms  p99 {m.load.p99_ms:6.2f} ms  "
                        f"| 1 conn p50 {m.latency.p50_ms:.3f} ms "
                        f"| others {m.other_load_cores:.2f} cores "
                        f"({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
    finally:
        if upstream is not None:
            upstream.stop()

    section = render_markdown(settings, measurements)
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in asdict(settings).items()},
                "measurements": [asdict(m) for m in measurements],
                "summary": summarise(measurements),
            },
            indent=2,
        )
    )
    print()
    print(section)
    if not args.no_write:
        key = f"{settings.scenario.name}:workers={settings.workers}"
        write_section(args.output, key, section)
        print(f"updated {args.output} (section {key}); raw figures in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
