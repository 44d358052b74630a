"""Authorizer CPU per Check over gRPC, without Envoy: do-nothing server vs the sidecar.

    .venv/bin/python -m bench.grpc_cpu [--scenario honeypots] [--seconds 4] [--rounds 4]
        [--concurrency 16] [--perf-record DIR]

``bench/run.py`` measures throughput through Envoy, where both the authorizer and
Envoy compete for the cores and a few microseconds hide in run-to-run noise. This
drives each authorizer directly with gRPC clients in this process (one channel,
``--concurrency`` calls in flight, a request shaped like Envoy's) and reports the
authorizer process's own CPU time per answered Check, alternating the two servers
round by round. It is the figure to watch while shaving the Check path.

A scenario that needs Redis (``ratelimit``) gets a redis-server of its own; the
do-nothing server then makes one plain redis-py ``GET`` per Check (the issue's
ceiling, as in ``bench/run.py``'s AR) and redis-server's CPU per Check is reported
beside the authorizer's.

``--perf-record DIR`` also samples each server with ``perf record`` (software
clock, call graphs) during its last round, for ``perf report -i DIR/<name>.data``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from bench.grpc_load import drive_checks, process_cpu_seconds
from bench.scenarios import SCENARIOS
from tests.harness.noop_authz import start_noop_authz
from tests.harness.sidecar import start_sidecar
from tests.redis_server import RedisServer


def envoy_like_request() -> CheckRequest:
    """What Envoy sends for ``GET /`` from wrk (headers as Envoy's ext_authz filter fills them)."""
    request = CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "127.0.0.1"
    attributes.source.address.socket_address.port_value = 40000
    attributes.destination.address.socket_address.address = "127.0.0.1"
    attributes.destination.address.socket_address.port_value = 10000
    http = attributes.request.http
    http.id = "12402937523532515651"
    http.method, http.path, http.host = "GET", "/", "127.0.0.1:10000"
    http.scheme, http.protocol = "http", "HTTP/1.1"
    http.headers.update(
        {
            ":authority": "127.0.0.1:10000",
            ":method": "GET",
            ":path": "/",
            ":scheme": "http",
            "x-forwarded-proto": "http",
            "x-request-id": "6c5d1d0e-8a4f-4b0f-9d61-0f3c1f7c2d11",
        }
    )
    attributes.request.time.GetCurrentTime()
    return request


def _measure(
    target: str,
    pid: int,
    seconds: float,
    concurrency: int,
    perf_out: Path | None,
    *,
    redis_pid: int | None,
) -> tuple[float, float]:
    """CPU µs per answered Check of the authorizer and of redis-server (0 without)."""
    request = envoy_like_request()
    asyncio.run(drive_checks(target, 1.0, concurrency, request))  # warm-up
    perf = None
    if perf_out is not None and shutil.which("perf"):
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(pid), "-o", str(perf_out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
    before = process_cpu_seconds(pid)
    redis_before = process_cpu_seconds(redis_pid) if redis_pid else 0.0
    answered = asyncio.run(drive_checks(target, seconds, concurrency, request))
    used = process_cpu_seconds(pid) - before
    redis_used = process_cpu_seconds(redis_pid) - redis_before if redis_pid else 0.0
    if perf is not None:
        perf.send_signal(2)
        perf.wait(30)
    return used / answered * 1e6, redis_used / answered * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="honeypots", choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--perf-record", type=Path, default=None)
    parser.add_argument("--sidecar-arg", action="append", default=[], help="extra serve flag")
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    results: dict[str, list[float]] = {"noop": [], "sidecar": []}
    redis_cpu: dict[str, list[float]] = {"noop": [], "sidecar": []}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        log_dir = Path(tmp)
        redis: RedisServer | None = None
        if scenario.needs_redis:
            (log_dir / "redis").mkdir()
            redis = stack.enter_context(RedisServer(log_dir / "redis"))
        redis_url = redis.url if redis is not None else None
        redis_pid = redis.process.pid if redis is not None and redis.process else None
        for round_index in range(args.rounds):
            last = round_index == args.rounds - 1
            for name, per_check in results.items():
                perf_out = None
                if last and args.perf_record is not None:
                    args.perf_record.mkdir(parents=True, exist_ok=True)
                    perf_out = args.perf_record / f"{name}.data"
                if name == "noop":
                    noop = start_noop_authz(log_dir=log_dir, redis_url=redis_url)
                    try:
                        value, in_redis = _measure(
                            noop.target,
                            noop.process.pid,
                            args.seconds,
                            args.concurrency,
                            perf_out,
                            redis_pid=redis_pid,
                        )
                    finally:
                        noop.stop()
                else:
                    sidecar = start_sidecar(
                        log_dir=log_dir,
                        policies=scenario.policies,
                        default_policy=scenario.default_policy,
                        redis_url=redis_url,
                        extra_args=args.sidecar_arg,
                    )
                    try:
                        value, in_redis = _measure(
                            sidecar.grpc_target,
                            sidecar.process.pid,
                            args.seconds,
                            args.concurrency,
                            perf_out,
                            redis_pid=redis_pid,
                        )
                    finally:
                        sidecar.stop()
                per_check.append(value)
                redis_cpu[name].append(in_redis)
                in_redis_text = f", redis-server {in_redis:.1f} µs" if redis_pid else ""
                print(
                    f"round {round_index + 1} {name}: {value:.1f} µs CPU per Check{in_redis_text}",
                    flush=True,
                )
    noop_median = statistics.median(results["noop"])
    sidecar_median = statistics.median(results["sidecar"])
    print(
        f"median: do-nothing {noop_median:.1f} µs, sidecar {sidecar_median:.1f} µs "
        f"(+{sidecar_median - noop_median:.1f} µs, ×{sidecar_median / noop_median:.2f})"
    )
    if scenario.needs_redis:
        noop_redis = statistics.median(redis_cpu["noop"])
        sidecar_redis = statistics.median(redis_cpu["sidecar"])
        print(
            f"median redis-server: do-nothing + GET {noop_redis:.1f} µs, sidecar "
            f"{sidecar_redis:.1f} µs; together {noop_median + noop_redis:.1f} vs "
            f"{sidecar_median + sidecar_redis:.1f} µs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
