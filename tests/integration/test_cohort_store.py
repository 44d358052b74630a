"""Cohorts on both stores: memberships listed and ended, and one Redis script call
per Check when a policy counts cohorts beside its rate limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sidecar.pipeline.engine import Engine
from sidecar.stores.base import Store
from sidecar.stores.memory import MemoryStore
from sidecar.stores.open import open_store
from tests.redis_server import RedisClusterServers, RedisServer, redis_available
from tests.unit.cohorts.support import compile_one, request

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: reviews, namespace: shop}
spec:
  rateLimits:
    - {name: posts, match: {methods: [POST]}, by: [ip], limit: 1000, period: 1m}
  cohorts:
    - {name: spammers, match: {methods: [POST]}, by: ip, threshold: 3, period: 1m, action: block, for: 10m}
    - {name: writers, match: {methods: [POST]}, by: "header:x-user", threshold: 2, period: 1m}
"""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisClusterServers() as servers:
        yield servers


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.slow]),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        built: Store = MemoryStore()
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        server.command("FLUSHALL")
        built = open_store(server.url, command_timeout_ms=2000)
    else:
        servers: RedisClusterServers = request.getfixturevalue("cluster")
        for node in servers.nodes:
            node.command("FLUSHALL")
        built = open_store(servers.url, command_timeout_ms=2000)
    try:
        yield built
    finally:
        await built.close()


async def test_members_are_listed_with_their_keys_and_can_be_removed(store: Store) -> None:
    policy = compile_one(POLICY)
    engine = Engine(store, MemoryStore())
    for ip, user in (("198.51.100.1", "a:b|c"), ("2001:db8::7", "zoë")):
        for _ in range(3):
            await engine.decide(request("POST", "/r", ip=ip, headers={"x-user": user}), policy)
    members = sorted((m.cohort, m.key) for m in await store.members("shop/reviews"))
    assert members == [
        ("spammers", "ip=198.51.100.1"),
        ("spammers", "ip=2001:db8::7"),
        ("writers", "header:x-user=a:b|c"),
        ("writers", "header:x-user=zoë"),
    ]
    longest = {"spammers": 600_000, "writers": 86_400_000}  # for: 10m, and the default 24h
    assert all(0 < m.ttl_ms <= longest[m.cohort] for m in await store.members("shop/reviews"))
    assert await store.members("shop/other") == ()

    assert await store.remove_member("shop/reviews", "spammers", "ip=2001:db8::7") is True
    assert await store.remove_member("shop/reviews", "spammers", "ip=2001:db8::7") is False
    assert (await engine.decide(request("GET", "/", ip="2001:db8::7"), policy)).allowed
    # The count went with the membership: one more POST does not re-admit the key.
    assert (await engine.decide(request("POST", "/r", ip="2001:db8::7"), policy)).allowed
    assert (await engine.decide(request("GET", "/", ip="2001:db8::7"), policy)).allowed
    assert not (await engine.decide(request("GET", "/", ip="198.51.100.1"), policy)).allowed


@pytest.mark.redis
async def test_one_script_call_per_check_with_limits_blocks_and_cohorts(redis: RedisServer) -> None:
    redis.command("FLUSHALL")
    store = open_store(redis.url, command_timeout_ms=2000)
    try:
        policy = compile_one(POLICY)
        engine = Engine(store, MemoryStore())
        await engine.decide(request("POST", "/r", ip="192.0.2.1"), policy)  # loads the script
        redis.command("CONFIG", "RESETSTAT")
        checks = 50
        for n in range(checks):
            await engine.decide(request("POST", "/r", ip=f"192.0.2.{n % 5}"), policy)
        assert redis.command_calls("evalsha") == checks
        assert redis.command_calls("eval") == 0
    finally:
        await store.close()
