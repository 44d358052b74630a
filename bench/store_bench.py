"""Store micro-benchmark: what one Check costs the sidecar's event loop.

Compares, in one run against one real redis-server:

* ``redis-py GET``: one plain redis-py call per Check (the "do-nothing server that
  makes one plain Redis call per request" of issue 5);
* ``RedisStore``: the real plan of a busy policy on every Check (an active-block
  check, three rate limits in one LimitCheck, a cohort count), coalesced;
* ``MemoryStore``: the same plan in process.

Each runs ``--checks`` Checks from ``--concurrency`` concurrent clients (as
concurrent gRPC Checks would arrive) on uvloop, and reports Checks per second,
client CPU per Check, and, for Redis, EVALSHA calls and pipelines per Check from
``INFO commandstats`` (before/after), which proves one round trip per Check.

    .venv/bin/python bench/store_bench.py [--redis-url redis://127.0.0.1:6379/0]

Without ``--redis-url`` it starts its own ``redis-server`` on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio

from sidecar.stores import keys
from sidecar.stores.base import (
    ActiveCheck,
    CohortCount,
    LimitCheck,
    LimitSpec,
    StorePlan,
)
from sidecar.stores.memory import MemoryStore
from sidecar.stores.open import open_store
from sidecar.stores.redis import RedisStore

POLICY = "bench/api"


def busy_plan(client: int) -> StorePlan:
    """What a policy with three rate limits and a cohort asks of the store per Check."""
    who = f"ip=10.0.{client // 256}.{client % 256}"
    member = keys.member_key(POLICY, "scrapers", who)
    return StorePlan(
        (
            ActiveCheck((keys.block_key(POLICY, "ip", who[3:]), member), (True, True)),
            LimitCheck(
                (
                    LimitSpec(
                        keys.limit_key(POLICY, "per-ip", who), "sliding_window", 10**6, 60_000
                    ),
                    LimitSpec(
                        keys.limit_key(POLICY, "burst", who), "token_bucket", 10**5, 1_000, 10**5
                    ),
                    LimitSpec(
                        keys.limit_key(POLICY, "daily", who), "fixed_window", 10**8, 86_400_000
                    ),
                )
            ),
            CohortCount(
                keys.cohort_counter_key(POLICY, "scrapers", who),
                member,
                10**8,
                3_600_000,
                86_400_000,
            ),
        )
    )


@dataclass
class Measurement:
    name: str
    checks: int
    seconds: float
    cpu_seconds: float
    note: str = ""

    def line(self) -> str:
        rate = self.checks / self.seconds
        cpu_us = self.cpu_seconds / self.checks * 1e6
        return f"{self.name:<14} {rate:>10,.0f} checks/s {cpu_us:>8.1f} µs CPU/check  {self.note}"


async def drive(
    name: str, check: Callable[[int], Awaitable[object]], checks: int, concurrency: int
) -> Measurement:
    per_worker = checks // concurrency

    async def worker(offset: int) -> None:
        for index in range(per_worker):
            await check(offset + index % 64)

    await asyncio.gather(*(worker(w * 64) for w in range(concurrency)))  # warm-up: connect, load
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w * 64) for w in range(concurrency)))
    return Measurement(
        name, per_worker * concurrency, time.perf_counter() - wall, time.process_time() - cpu
    )


def commandstat(url: str, command: str) -> int:
    out = subprocess.run(
        ["redis-cli", "-u", url, "INFO", "commandstats"], capture_output=True, text=True, check=True
    ).stdout
    prefix = f"cmdstat_{command}:calls="
    for line in out.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix) :].split(",", 1)[0])
    return 0


async def run(url: str, checks: int, concurrency: int) -> list[Measurement]:
    results = []
    plans = [busy_plan(i) for i in range(64 * concurrency)]

    client: Any = redis_asyncio.Redis.from_url(url)  # loosely typed: stubs lag redis-py
    await client.set("bench:plain", "1")
    results.append(
        await drive("redis-py GET", lambda i: client.get("bench:plain"), checks, concurrency)
    )
    await client.aclose()

    store = open_store(url, command_timeout_ms=1000)
    assert isinstance(store, RedisStore)
    await store.execute(plans[0])
    before_eval = commandstat(url, "evalsha")
    # drive() runs a warm-up pass and a measured pass: count both for EVALSHA/Check.
    batches_before, scripts_before = store.batches, store.scripts
    measured = await drive("RedisStore", lambda i: store.execute(plans[i]), checks, concurrency)
    evalsha = commandstat(url, "evalsha") - before_eval
    sent = store.scripts - scripts_before
    batches = store.batches - batches_before
    measured.note = (
        f"EVALSHA per Check {evalsha / sent:.3f}, Checks per pipeline {sent / max(1, batches):.1f}"
    )
    results.append(measured)
    await store.close()

    memory = MemoryStore()
    results.append(
        await drive("MemoryStore", lambda i: memory.execute(plans[i]), checks, concurrency)
    )
    return results


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    runner: Callable[..., Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(redis_server())
        print(f"{args.checks} Checks, {args.concurrency} concurrent, against {url}")
        for measurement in runner(run(url, args.checks, args.concurrency)):
            print(measurement.line())


if __name__ == "__main__":
    main()
