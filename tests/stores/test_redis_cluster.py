"""The Redis store against a real three-node Redis Cluster on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from sidecar.stores import keys
from sidecar.stores.base import (
    ActiveCheck,
    BlockSet,
    CohortCount,
    CountResult,
    LimitCheck,
    LimitResult,
    LimitSpec,
    RevocationCheck,
    RevocationResult,
    StorePlan,
)
from sidecar.stores.open import open_store
from sidecar.stores.redis import RedisStore
from tests.redis_server import RedisClusterServers, redis_available

pytestmark = [pytest.mark.redis, pytest.mark.slow]

POLICIES = ("shop/reviews", "shop/orders", "billing/api", "search/public")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisClusterServers() as servers:
        yield servers


@pytest.fixture
async def cluster_store(cluster: RedisClusterServers) -> AsyncIterator[RedisStore]:
    for node in cluster.nodes:
        node.command("FLUSHALL")
        node.command("CONFIG", "RESETSTAT")
    store = open_store(cluster.url, command_timeout_ms=2000)
    assert isinstance(store, RedisStore)
    yield store
    await store.close()


def twenty(policy: str) -> LimitSpec:
    return LimitSpec(keys.limit_key(policy, "twenty", "ip=192.0.2.1"), "sliding_window", 20, 60_000)


async def test_limits_hold_exactly_on_every_node(
    cluster: RedisClusterServers, cluster_store: RedisStore
) -> None:
    # The policies' hash tags land on different nodes; each keeps its own count.
    plans = {policy: StorePlan((LimitCheck((twenty(policy),)),)) for policy in POLICIES}
    warm = {policy: LimitSpec(keys.limit_key(policy, "warm", "-"), "fixed_window", 1, 1000)
            for policy in POLICIES}  # fmt: skip
    for spec in warm.values():  # loads the script on every node (NOSCRIPT once each)
        await cluster_store.execute(StorePlan((LimitCheck((spec,)),)))
    for node in cluster.nodes:
        node.command("CONFIG", "RESETSTAT")
    results = await asyncio.gather(
        *(cluster_store.execute(plan) for plan in plans.values() for _ in range(40))
    )
    allowed = [r[0].allowed for r in results if isinstance(r[0], LimitResult)]
    assert sum(allowed) == 20 * len(POLICIES)
    assert cluster.command_calls("evalsha") == 40 * len(POLICIES)
    populated = [node for node in cluster.nodes if int(node.command("DBSIZE")) > 0]
    assert len(populated) >= 2


async def test_a_plan_with_a_revocation_check_spans_two_slots(
    cluster: RedisClusterServers, cluster_store: RedisStore
) -> None:
    policy = "shop/reviews"
    who = "subject=alice"
    block = keys.block_key(policy, "subject", "alice")
    plan = StorePlan(
        (
            ActiveCheck((block,), (True,)),
            RevocationCheck(keys.revocation_key("jti-1")),
            LimitCheck((twenty(policy),)),
            CohortCount(
                keys.cohort_counter_key(policy, "c", who),
                keys.member_key(policy, "c", who),
                100,
                60_000,
                60_000,
            ),
        )
    )
    first = await cluster_store.execute(plan)
    assert first[1] == RevocationResult(False)
    assert isinstance(first[2], LimitResult)
    assert first[2].states[0].remaining == 19
    assert first[3] == CountResult(1, False, False)

    await cluster_store.revoke("jti-1", 60)
    revoked = await cluster_store.execute(plan)
    assert revoked[1] == RevocationResult(True)
    assert revoked[2:] == (None, None)  # reported as not run (see redis.py: trade-off)

    await cluster_store.execute(StorePlan((BlockSet((block,), 60_000, "honeypot"),)))
    blocked = await cluster_store.execute(plan)
    assert blocked[1:] == (None, None, None)
    assert await cluster_store.unblock(policy, "subject", "alice") == 1


async def test_cluster_ping(cluster_store: RedisStore) -> None:
    await cluster_store.ping()
