"""What tracing costs one Check: ``Authorizer.check`` with tracing off vs on.

    .venv/bin/python -m bench.tracing_overhead [--checks 20000] [--rounds 5]
    .venv/bin/python -m bench.tracing_overhead --grpc [--seconds 4] [--rounds 8]

In one process, on one event loop, with a real ``CheckRequest`` through a policy
with five steps (active blocks, honeypot, IP reputation, identity by API key,
a rate limit: 7 spans per traced Check with the store call) and the in-process
store. Configurations, alternated round by round so machine drift spreads over
all of them:

- **off**: no ``--otlp-endpoint`` (the Authorizer has no Tracing object);
- **unsampled**: tracing on, ``ABUSE_SIDECAR_TRACE_SAMPLING=0``, no traceparent;
- **on**: 100% sampling, the request continues a sampled client ``traceparent``;
- **on-root**: 100% sampling, no ``traceparent`` (the sidecar starts the trace).

Spans really leave: they go over OTLP/gRPC to a collector in another process
(``tests/harness/otlp_receiver.py``), and each round's time includes flushing
what it queued. Every configuration yields to the loop after each Check, as a
gRPC server does, so the exporter task runs as it would in production.

With ``--grpc`` the same policy is served by ``abuse-sidecar serve`` (started as
operators start it, with and without ``--otlp-endpoint``, alternating) and
driven over gRPC by 16 concurrent clients in this process; the figure is the
sidecar process's CPU per Check, which includes what grpc.aio costs.

This isolates the sidecar's own work per Check; ``bench/run.py --tracing``
measures the same comparison as throughput through Envoy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from bench.grpc_load import drive_checks, process_cpu_seconds
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_file
from sidecar.observability import metrics
from sidecar.observability.decision_log import DecisionLog
from sidecar.observability.tracing import Tracing, build_tracing
from sidecar.pipeline.engine import Engine
from sidecar.server.authz import Authorizer
from sidecar.stores.memory import MemoryStore
from tests.harness.ports import free_port
from tests.harness.sidecar import start_sidecar

API_KEY = "bench-key-0123456789"
POLICY = f"""\
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: traced, namespace: bench}}
spec:
  hosts: [api.example.com]
  honeypots: {{paths: [/.env, /wp-login.php], blockFor: 1h}}
  ipReputation: {{denyCIDRs: [203.0.113.0/24]}}
  identity:
    required: true
    apiKey:
      in: header
      name: x-api-key
      keys: [{{id: k1, sha256: "{hashlib.sha256(API_KEY.encode()).hexdigest()}", subject: alice, plan: gold}}]
  rateLimits:
    - {{name: per-subject, by: [subject], limit: 100000000, period: 1m}}
"""
CLIENT_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def check_request(*, traceparent: bool) -> CheckRequest:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", "/api/items?page=2", "api.example.com"
    headers = {
        ":authority": "api.example.com",
        ":method": "GET",
        ":path": "/api/items?page=2",
        "user-agent": "bench/1.0",
        "accept": "application/json",
        "x-api-key": API_KEY,
        "x-request-id": "9b0c8f1e-5a7d-4a59-9b8e-0d1c2e3f4a5b",
    }
    if traceparent:
        headers["traceparent"] = CLIENT_TRACEPARENT
        headers["tracestate"] = "vendor=opaque"
    http.headers.update(headers)
    request.attributes.source.address.socket_address.address = "198.51.100.7"
    return request


async def _round(authorizer: Authorizer, request: CheckRequest, checks: int) -> float:
    """CPU seconds of this process per Check, including flushing the spans this round
    queued (CPU, not wall time: the machine is shared, and the export threads of
    grpc count too)."""
    started = time.process_time()
    for _ in range(checks):
        response = await authorizer.check(request)
        await asyncio.sleep(0)  # a gRPC server yields between requests; the exporter runs
    if authorizer.tracing is not None:
        await authorizer.tracing.exporter.flush()
    elapsed = time.process_time() - started
    answer = CheckResponse.FromString(response)  # the Check handler answers wire bytes
    if answer.status.code != 0:
        raise RuntimeError(f"the benchmark request was denied: {answer}")
    return elapsed / checks


def _dropped() -> float:
    total = 0.0
    for metric in metrics.SPANS_DROPPED.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def measure(checks: int, rounds: int, endpoint: str) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.yaml"
        policy_file.write_text(POLICY)
        registry = PolicyRegistry(Resources())
        registry.replace_source("bench", load_file(policy_file))
    states = registry.current.states
    if not states or states[0].state != "ready":
        raise RuntimeError(f"benchmark policy did not compile: {states}")
    engine = Engine(MemoryStore(), MemoryStore())
    decision_log = DecisionLog()
    traced: Tracing = build_tracing(endpoint, 1.0)
    unsampled: Tracing = build_tracing(endpoint, 0.0)
    await traced.start()
    await unsampled.start()
    configs = {
        "off": (
            Authorizer(registry, engine, decision_log=decision_log),
            check_request(traceparent=True),
        ),
        "unsampled": (
            Authorizer(registry, engine, tracing=unsampled, decision_log=decision_log),
            check_request(traceparent=False),
        ),
        "on": (
            Authorizer(registry, engine, tracing=traced, decision_log=decision_log),
            check_request(traceparent=True),
        ),
        "on-root": (
            Authorizer(registry, engine, tracing=traced, decision_log=decision_log),
            check_request(traceparent=False),
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in configs}
    for authorizer, request in configs.values():  # warm-up: caches, first export
        await _round(authorizer, request, min(2000, checks))
    for _ in range(rounds):
        for name, (authorizer, request) in configs.items():
            results[name].append(await _round(authorizer, request, checks))
    await traced.aclose()
    await unsampled.aclose()
    if _dropped():
        raise RuntimeError(
            f"{_dropped():.0f} spans were dropped: the figures would flatter tracing"
        )
    return results


def measure_grpc(seconds: float, rounds: int, endpoint: str) -> dict[str, list[float]]:
    """Sidecar CPU seconds per Check over gRPC, ``serve`` without / with tracing."""
    request = check_request(traceparent=True)
    results: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.yaml"
        policy_file.write_text(POLICY)
        for _ in range(rounds):
            for name, per_check in results.items():
                extra = ["--otlp-endpoint", endpoint] if name == "on" else []
                sidecar = start_sidecar(log_dir=Path(tmp), policies=[policy_file], extra_args=extra)
                try:
                    asyncio.run(drive_checks(sidecar.grpc_target, 1.0, 16, request))  # warm-up
                    before = process_cpu_seconds(sidecar.process.pid)
                    answered = asyncio.run(drive_checks(sidecar.grpc_target, seconds, 16, request))
                    used = process_cpu_seconds(sidecar.process.pid) - before
                finally:
                    sidecar.stop()
                per_check.append(used / answered)
    return results


def report(results: dict[str, list[float]], what: str, rounds: int) -> str:
    base = statistics.median(results["off"])
    lines = [
        f"{what} x {rounds} rounds, median of rounds (Python {sys.version.split()[0]}):",
        "",
        "| configuration | CPU µs per Check | vs off |",
        "| --- | ---: | ---: |",
    ]
    for name, values in results.items():
        median = statistics.median(values)
        delta = (
            ""
            if name == "off"
            else f"{(median - base) / base * 100:+.0f}% ({(median - base) * 1e6:+.1f} µs)"
        )
        lines.append(f"| {name} | {median * 1e6:.1f} | {delta} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc", action="store_true", help="measure serve over gRPC instead")
    parser.add_argument("--seconds", type=float, default=4.0, help="--grpc: load per round")
    args = parser.parse_args(argv)
    port = free_port()
    collector = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.otlp_receiver", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert collector.stdout is not None
        collector.stdout.readline()  # "listening ..."
        endpoint = f"http://127.0.0.1:{port}"
        if args.grpc:
            results = measure_grpc(args.seconds, args.rounds, endpoint)
            what = f"sidecar CPU per Check over gRPC, 16 clients, {args.seconds:g} s"
        else:
            results = asyncio.run(measure(args.checks, args.rounds, endpoint))
            what = f"Authorizer.check, {args.checks} Checks"
    finally:
        collector.terminate()
        received = collector.communicate(timeout=10)[0].strip()
    print(report(results, what, args.rounds))
    print(f"\ncollector: {received}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
