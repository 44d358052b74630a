"""Driving an authorizer directly over gRPC, and reading what a process spent.

Shared by the benchmarks that measure an authorizer without Envoy
(``grpc_cpu.py``, ``tracing_overhead.py --grpc``).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def drive_checks(target: str, seconds: float, concurrency: int, request: CheckRequest) -> int:
    """Send ``request`` for ``seconds`` with ``concurrency`` calls in flight on one
    channel; the number of answered Checks."""
    channel = grpc.aio.insecure_channel(target)
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    answered = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal answered
        while time.monotonic() < deadline:
            await stub.Check(request)
            answered += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await channel.close()
    return answered
