"""What only the Redis store has: round trips, coalescing, sharing, outages, NOSCRIPT."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import ConfigurationError, StoreUnavailable
from sidecar.stores import keys
from sidecar.stores.base import (
    ActiveCheck,
    ActiveResult,
    CohortCount,
    LimitCheck,
    LimitResult,
    LimitSpec,
    StorePlan,
)
from sidecar.stores.memory import MemoryStore
from sidecar.stores.open import open_store
from sidecar.stores.redis import RedisStore
from tests.harness.ports import free_port
from tests.harness.processes import start_process, wait_for_tcp
from tests.redis_server import REDIS_SERVER, RedisServer, redis_available
from tests.self_signed import self_signed_pem

pytestmark = pytest.mark.redis

POLICY = "shop/reviews"
REPO = Path(__file__).resolve().parents[2]


def realistic_plan(client: str) -> StorePlan:
    """Three rate limits and a cohort, as a busy policy sends on every request."""
    who = f"ip={client}"
    return StorePlan(
        (
            ActiveCheck((keys.member_key(POLICY, "scrapers", who),), (True,)),
            LimitCheck(
                (
                    LimitSpec(
                        keys.limit_key(POLICY, "per-ip", who), "sliding_window", 1000, 60_000
                    ),
                    LimitSpec(
                        keys.limit_key(POLICY, "burst", who), "token_bucket", 100, 1_000, 200
                    ),
                    LimitSpec(
                        keys.limit_key(POLICY, "daily", who), "fixed_window", 10**6, 86_400_000
                    ),
                )
            ),
            CohortCount(
                keys.cohort_counter_key(POLICY, "scrapers", who),
                keys.member_key(POLICY, "scrapers", who),
                10**6,
                3_600_000,
                86_400_000,
            ),
        )
    )


def twenty(rule: str = "twenty") -> StorePlan:
    spec = LimitSpec(keys.limit_key(POLICY, rule, "ip=192.0.2.1"), "sliding_window", 20, 60_000)
    return StorePlan((LimitCheck((spec,)),))


def redis_store(server: RedisServer, **tuning: Any) -> RedisStore:
    store = open_store(server.url, **tuning)
    assert isinstance(store, RedisStore)
    return store


async def allowed_count(store: RedisStore, plan: StorePlan, attempts: int) -> int:
    results = await asyncio.gather(*(store.execute(plan) for _ in range(attempts)))
    return sum(isinstance(r[-1], LimitResult) and r[-1].allowed for r in results)


async def test_one_evalsha_per_check(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    try:
        await store.execute(realistic_plan("198.51.100.1"))  # loads the script
        clean_redis.command("CONFIG", "RESETSTAT")
        for index in range(50):
            await store.execute(realistic_plan(f"198.51.100.{index % 7}"))
        await asyncio.gather(*(store.execute(realistic_plan(f"203.0.113.{i}")) for i in range(100)))
        assert clean_redis.command_calls("evalsha") == 150
        assert clean_redis.command_calls("eval") == 0
        assert clean_redis.command_calls("script|load") == 0
    finally:
        await store.close()


async def test_checks_of_one_loop_turn_share_one_pipeline(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    try:
        await store.execute(realistic_plan("198.51.100.1"))
        batches, scripts = store.batches, store.scripts
        await asyncio.gather(*(store.execute(realistic_plan(f"203.0.113.{i}")) for i in range(200)))
        assert store.scripts - scripts == 200
        assert store.batches - batches == 1
    finally:
        await store.close()


async def test_many_concurrent_checks_against_twenty(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    try:
        # Spread over many loop turns and both lanes, not one tidy batch.
        async def one() -> bool:
            await asyncio.sleep(0)
            (result,) = await store.execute(twenty())
            return isinstance(result, LimitResult) and result.allowed

        outcomes = await asyncio.gather(*(one() for _ in range(200)))
        assert sum(outcomes) == 20
    finally:
        await store.close()


def test_two_event_loops_share_one_limit(clean_redis: RedisServer) -> None:
    counts: list[int] = []

    def run() -> None:
        async def main() -> int:
            store = redis_store(clean_redis, command_timeout_ms=2000)
            try:
                return await allowed_count(store, twenty("loops"), 20)
            finally:
                await store.close()

        counts.append(asyncio.run(main()))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(counts) == 2
    assert sum(counts) == 20


CHILD = """
import asyncio, sys
from sidecar.stores.base import LimitCheck, LimitResult, LimitSpec, StorePlan
from sidecar.stores.open import open_store

async def main():
    store = open_store(sys.argv[1], command_timeout_ms=2000)
    spec = LimitSpec(sys.argv[2], "sliding_window", 20, 60_000)
    plan = StorePlan((LimitCheck((spec,)),))
    results = await asyncio.gather(*(store.execute(plan) for _ in range(20)))
    await store.close()
    print(sum(r[0].allowed for r in results))

asyncio.run(main())
"""


def test_two_processes_share_one_limit(clean_redis: RedisServer) -> None:
    key = keys.limit_key(POLICY, "processes", "ip=192.0.2.1")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, clean_redis.url, key],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    counts = [int(child.communicate(timeout=60)[0].strip()) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert sum(counts) == 20


async def test_noscript_after_script_flush(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    try:
        await store.execute(twenty())
        clean_redis.command("SCRIPT", "FLUSH")
        clean_redis.command("CONFIG", "RESETSTAT")
        results = await asyncio.gather(*(store.execute(twenty()) for _ in range(5)))
        assert all(isinstance(r[0], LimitResult) and r[0].allowed for r in results)
        assert clean_redis.command_calls("script|load") == 1
        (result,) = await store.execute(twenty())
        assert isinstance(result, LimitResult)
        assert result.states[0].remaining == 13  # counting went on: 1 + 5 + this one
    finally:
        await store.close()


async def test_states_an_earlier_version_wrote_as_text_keep_counting(
    clean_redis: RedisServer,
) -> None:
    """check.lua now packs states as doubles; text states from before are still read,
    so a rolling upgrade does not reset anybody's counts."""
    seconds, micros = (int(part) for part in clean_redis.command("TIME").split())
    now_ms = seconds * 1000 + micros // 1000
    who = "ip=192.0.2.7"
    sliding = keys.limit_key(POLICY, "old-sliding", who)
    fixed = keys.limit_key(POLICY, "old-fixed", who)
    bucket = keys.limit_key(POLICY, "old-bucket", who)
    day, minute = 86_400_000, 60_000
    clean_redis.command("SET", sliding, f"{now_ms // day} 7 0", "PX", str(2 * day))
    clean_redis.command("SET", fixed, f"{now_ms // minute} 5", "PX", str(minute))
    # A token bucket whose theoretical arrival time is 3 emission intervals ahead.
    interval_us = 10_000_000  # 6 per minute
    clean_redis.command("SET", bucket, str(now_ms * 1000 + 3 * interval_us), "PX", "60000")
    plan = StorePlan(
        (
            LimitCheck(
                (
                    LimitSpec(sliding, "sliding_window", 10, day),
                    LimitSpec(fixed, "fixed_window", 10, minute),
                    LimitSpec(bucket, "token_bucket", 6, minute),
                )
            ),
        )
    )
    store = redis_store(clean_redis, command_timeout_ms=2000)
    try:
        (result,) = await store.execute(plan)
        assert isinstance(result, LimitResult)
        assert result.allowed
        assert [state.remaining for state in result.states] == [2, 4, 2]
        # Written back packed, and read back as such.
        assert clean_redis.command("GETRANGE", fixed, "0", "0") == "\x00"
        (again,) = await store.execute(plan)
        assert isinstance(again, LimitResult)
        assert [state.remaining for state in again.states] == [1, 3, 1]
    finally:
        await store.close()


async def test_over_limit_keys_are_denied_without_a_round_trip(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    spec = LimitSpec(keys.limit_key(POLICY, "two", "ip=192.0.2.1"), "fixed_window", 2, 60_000)
    only_limit = StorePlan((LimitCheck((spec,)),))
    block = keys.block_key(POLICY, "ip", "192.0.2.1")
    with_block_check = StorePlan((ActiveCheck((block,), (True,)), LimitCheck((spec,))))
    try:
        for _ in range(3):
            await store.execute(only_limit)
        clean_redis.command("CONFIG", "RESETSTAT")
        for _ in range(10):
            (result,) = await store.execute(only_limit)
            assert isinstance(result, LimitResult)
            assert not result.allowed
            assert 0 < result.states[0].retry_after_ms <= 60_000
        assert clean_redis.command_calls("evalsha") == 0
        # What precedes the full limit still runs (a block outranks a rate limit).
        active, limited = await store.execute(with_block_check)
        assert active == ActiveResult((None,), (0,))
        assert isinstance(limited, LimitResult)
        assert not limited.allowed
        assert clean_redis.command_calls("evalsha") == 1
        # A different key is not affected.
        other = LimitSpec(keys.limit_key(POLICY, "two", "ip=192.0.2.2"), "fixed_window", 2, 60_000)
        (fresh,) = await store.execute(StorePlan((LimitCheck((other,)),)))
        assert isinstance(fresh, LimitResult)
        assert fresh.allowed
    finally:
        await store.close()


async def test_the_local_denial_ends_with_the_window(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    spec = LimitSpec(keys.limit_key(POLICY, "short", "ip=192.0.2.1"), "sliding_window", 1, 300)
    only_limit = StorePlan((LimitCheck((spec,)),))
    try:
        await store.execute(only_limit)
        (denied,) = await store.execute(only_limit)
        assert isinstance(denied, LimitResult)
        assert not denied.allowed
        await asyncio.sleep(denied.states[0].retry_after_ms / 1000 + 0.02)
        (again,) = await store.execute(only_limit)
        assert isinstance(again, LimitResult)
        assert again.allowed
    finally:
        await store.close()


async def test_redis_stopped_mid_test_then_restarted(own_redis: RedisServer) -> None:
    errors: list[str] = []
    store = redis_store(
        own_redis,
        command_timeout_ms=50,
        failure_threshold=3,
        probe_interval_ms=100,
        on_error=errors.append,
    )
    try:
        (result,) = await store.execute(twenty())
        assert isinstance(result, LimitResult)
        await store.ping()
        own_redis.stop()

        failures = 0
        started = time.monotonic()
        while failures < 20:
            before = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.execute(twenty())
            assert time.monotonic() - before < 0.5  # never waits long
            failures += 1
        assert time.monotonic() - started < 2
        # The breaker is open: a call now costs no socket at all.
        before = time.perf_counter()
        for _ in range(100):
            with pytest.raises(StoreUnavailable, match="circuit open"):
                await store.execute(twenty())
        assert (time.perf_counter() - before) / 100 < 0.001
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert len(errors) == 120
        assert set(errors) == {"redis"}

        own_redis.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                (result,) = await store.execute(twenty())
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover"
                await asyncio.sleep(0.05)
        assert isinstance(result, LimitResult)
        assert result.allowed
        assert result.states[0].remaining == 19  # a fresh, empty Redis
        await store.ping()
    finally:
        await store.close()


async def test_a_hung_redis_times_out_quickly(own_redis: RedisServer) -> None:
    store = redis_store(own_redis, command_timeout_ms=50, failure_threshold=3)
    try:
        await store.execute(twenty())
        own_redis.pause()
        try:
            before = time.monotonic()
            with pytest.raises(StoreUnavailable, match="no answer within 50 ms"):
                await store.execute(twenty())
            assert time.monotonic() - before < 0.3
        finally:
            own_redis.resume()
        (result,) = await store.execute(twenty())  # one timeout did not open the circuit
        assert isinstance(result, LimitResult)
    finally:
        await store.close()


async def test_a_restart_between_checks_costs_no_failed_check(own_redis: RedisServer) -> None:
    store = redis_store(own_redis, command_timeout_ms=500)
    try:
        await store.execute(twenty())
        own_redis.restart()
        (result,) = await store.execute(twenty())  # the idle socket is dialled again
        assert isinstance(result, LimitResult)
        assert result.states[0].remaining == 19
    finally:
        await store.close()


async def test_revoke_and_unblock_go_to_redis(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis)
    try:
        await store.revoke("jti-42", 3600)
        ttl = int(clean_redis.command("TTL", keys.revocation_key("jti-42")))
        assert 3590 < ttl <= 3600
        clean_redis.command("SET", keys.block_key(POLICY, "subject", "eve*"), "1")
        clean_redis.command("SET", keys.member_key(POLICY, "c", "subject=eve*"), "1")
        clean_redis.command("SET", keys.member_key(POLICY, "c", "subject=eve2"), "1")
        assert await store.unblock(POLICY, "subject", "eve*") == 2  # '*' is not a wildcard
        assert clean_redis.command("EXISTS", keys.member_key(POLICY, "c", "subject=eve2")) == "1"
    finally:
        await store.close()


def test_store_urls() -> None:
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store("memory://"), MemoryStore)
    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@redis.example:6380/1",
        "redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
    ):
        assert isinstance(open_store(url), RedisStore)
    with pytest.raises(ConfigurationError, match="unsupported store URL scheme 'mongodb'"):
        open_store("mongodb://localhost")
    with pytest.raises(ConfigurationError, match="timeout"):
        open_store("redis://localhost", command_timeout_ms=0)


async def test_a_deep_queue_is_sent_in_bounded_pipelines(clean_redis: RedisServer) -> None:
    store = redis_store(clean_redis, command_timeout_ms=2000)
    try:
        await store.execute(realistic_plan("198.51.100.1"))
        batches = store.batches
        results = await asyncio.gather(
            *(store.execute(realistic_plan(f"203.0.{i // 250}.{i % 250}")) for i in range(600))
        )
        assert all(isinstance(r[1], LimitResult) and r[1].allowed for r in results)
        assert store.batches - batches == 3  # 256 + 256 on the two lanes, then 88
    finally:
        await store.close()


async def test_redis_sentinel(own_redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {own_redis.port} 1\n"
    )
    sentinel = start_process(
        "sentinel", [REDIS_SERVER, str(config), "--sentinel"], log_dir=tmp_path
    )
    try:
        wait_for_tcp("127.0.0.1", port, process=sentinel)
        store = open_store(f"redis+sentinel://127.0.0.1:{port}/mymaster", command_timeout_ms=2000)
        try:
            results = await asyncio.gather(*(store.execute(twenty("sentinel")) for _ in range(30)))
            assert sum(isinstance(r[0], LimitResult) and r[0].allowed for r in results) == 20
            await store.ping()
        finally:
            await store.close()
        assert (
            own_redis.command("EXISTS", keys.limit_key(POLICY, "sentinel", "ip=192.0.2.1")) == "1"
        )
    finally:
        sentinel.stop()


async def test_rediss_carries_the_scripts_over_tls(tmp_path: Path) -> None:
    """redis-py makes the TLS connection; the store's lane then reads the replies
    through the TLS transport: limits hold, NOSCRIPT reloads, a restart recovers."""
    if not redis_available():
        pytest.skip("redis-server is not installed")
    cert_pem, key_pem = self_signed_pem("redis.test")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    tls_port = free_port()
    tls = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with RedisServer(tmp_path, extra_args=tls) as server:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
        store = open_store(url, command_timeout_ms=2000)
        try:
            assert await allowed_count(store, twenty("tls"), 30) == 20  # type: ignore[arg-type]
            server.command("SCRIPT", "FLUSH")
            (result,) = await store.execute(twenty("tls-2"))
            assert isinstance(result, LimitResult)
            assert result.states[0].remaining == 19
            server.restart()
            (result,) = await store.execute(twenty("tls-3"))
            assert isinstance(result, LimitResult)
            assert result.states[0].remaining == 19
            await store.ping()
        finally:
            await store.close()
        assert server.command("EXISTS", keys.limit_key(POLICY, "tls-3", "ip=192.0.2.1")) == "1"


async def test_a_read_only_replica_is_unavailable_until_it_is_promoted(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """A failed-over master answers READONLY: that Check fails (failureMode then
    applies) and the store dials again, so the next Check reaches whatever the
    address serves now (with Sentinel: the new master)."""
    replica_of = ("--replicaof", own_redis.host, str(own_redis.port))
    with RedisServer(tmp_path, extra_args=replica_of, name="replica") as replica:
        store = redis_store(replica, command_timeout_ms=2000)
        try:
            # The script is not loaded there yet: NOSCRIPT, load, then READONLY.
            with pytest.raises(StoreUnavailable, match="READONLY"):
                await store.execute(twenty("replica"))
            with pytest.raises(StoreUnavailable, match="READONLY"):
                await store.execute(twenty("replica"))
            dialled = _connections_received(replica)
            replica.command("REPLICAOF", "NO", "ONE")
            (result,) = await store.execute(twenty("replica"))
            assert isinstance(result, LimitResult)
            assert result.allowed
            # A new connection (and redis-cli's two: REPLICAOF, INFO).
            assert _connections_received(replica) == dialled + 3
        finally:
            await store.close()


def _connections_received(server: RedisServer) -> int:
    for line in server.command("INFO", "stats").splitlines():
        if line.startswith("total_connections_received:"):
            return int(line.split(":", 1)[1])
    raise AssertionError("INFO stats has no total_connections_received")
