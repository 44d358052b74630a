"""One behaviour suite for every Store: in-process and real Redis.

Time comes from the store (the wall clock, Redis ``TIME``), so the few tests
about window edges wait for real window boundaries; their periods are short.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.stores import keys
from sidecar.stores.base import (
    ActiveCheck,
    ActiveResult,
    BlockSet,
    CohortCount,
    CountResult,
    LimitCheck,
    LimitResult,
    LimitSpec,
    RevocationCheck,
    RevocationResult,
    Store,
    StorePlan,
)
from sidecar.stores.memory import MemoryStore

POLICY = "shop/reviews"


def limit(rule: str, who: str = "ip=192.0.2.1", **fields: object) -> LimitSpec:
    settings: dict[str, object] = {"algorithm": "sliding_window", "limit": 20, "period_ms": 60_000}
    settings.update(fields)
    return LimitSpec(keys.limit_key(POLICY, rule, who), **settings)  # type: ignore[arg-type]


def plan(*operations: object, shadow: bool = False) -> StorePlan:
    return StorePlan(tuple(operations), shadow)  # type: ignore[arg-type]


async def consume(store: Store, *specs: LimitSpec) -> LimitResult:
    (result,) = await store.execute(plan(LimitCheck(specs)))
    assert isinstance(result, LimitResult)
    return result


async def sleep_until_window_offset(period_ms: int, offset_ms: int) -> None:
    """Wait until the wall clock is ``offset_ms`` into a fresh window of ``period_ms``."""
    now_ms = time.time() * 1000
    wait = (offset_ms - now_ms % period_ms) % period_ms
    await asyncio.sleep(wait / 1000)


@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket", "fixed_window"])
async def test_a_limit_allows_exactly_its_limit(store: Store, algorithm: str) -> None:
    spec = limit("five", algorithm=algorithm, limit=5, period_ms=60_000)
    remaining = [(await consume(store, spec)).states[0].remaining for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    denied = await consume(store, spec)
    assert not denied.allowed
    assert denied.states[0].remaining == 0
    # The sliding window may only admit the next request well into the next window
    # (once the full previous window has faded enough): up to two periods away.
    longest_wait = 120_000 if algorithm == "sliding_window" else 60_000
    assert 0 < denied.states[0].retry_after_ms <= longest_wait


@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket", "fixed_window"])
async def test_concurrent_checks_get_exactly_the_limit(store: Store, algorithm: str) -> None:
    spec = limit("twenty", algorithm=algorithm, limit=20, period_ms=60_000)
    results = await asyncio.gather(*(consume(store, spec) for _ in range(40)))
    assert sum(result.allowed for result in results) == 20
    remaining = sorted(r.states[0].remaining for r in results if r.allowed)
    assert remaining == list(range(20))


async def test_a_denied_check_consumes_none_of_its_limits(store: Store) -> None:
    roomy = limit("roomy", limit=10)
    tight = limit("tight", limit=1)
    assert (await consume(store, roomy, tight)).allowed
    denied = await consume(store, roomy, tight)
    assert not denied.allowed
    # The roomy limit had room: it reports what is left *now*, unconsumed.
    assert denied.states[0].remaining == 9
    assert denied.states[0].retry_after_ms == 0
    assert denied.states[1].retry_after_ms > 0
    alone = await consume(store, roomy)
    assert alone.states[0].remaining == 8


async def test_the_plan_stops_at_the_first_deny(store: Store) -> None:
    block = keys.block_key(POLICY, "ip", "192.0.2.1")
    await store.execute(plan(BlockSet((block,), 60_000, "honeypot")))
    spec = limit("after-block", limit=3)
    results = await store.execute(plan(ActiveCheck((block,), (True,)), LimitCheck((spec,))))
    assert isinstance(results[0], ActiveResult)
    assert results[0].values == ("honeypot",)
    assert 0 < results[0].ttls_ms[0] <= 60_000
    assert results[1] is None
    # Nothing was consumed behind the block.
    assert (await consume(store, spec)).states[0].remaining == 2


async def test_an_informative_active_key_does_not_stop_the_plan(store: Store) -> None:
    member = keys.member_key(POLICY, "watch", "ip=192.0.2.1")
    await store.execute(plan(BlockSet((member,), 60_000, "1")))
    spec = limit("flagged", limit=3)
    results = await store.execute(plan(ActiveCheck((member,), (False,)), LimitCheck((spec,))))
    assert isinstance(results[0], ActiveResult)
    assert results[0].values == ("1",)
    assert isinstance(results[1], LimitResult)
    assert results[1].allowed


async def test_a_shadow_plan_runs_every_operation(store: Store) -> None:
    tight = limit("shadowed", limit=1)
    counter = keys.cohort_counter_key(POLICY, "c", "ip=192.0.2.1")
    member = keys.member_key(POLICY, "c", "ip=192.0.2.1")
    await consume(store, tight)
    results = await store.execute(
        plan(LimitCheck((tight,)), CohortCount(counter, member, 5, 60_000, 60_000), shadow=True)
    )
    assert isinstance(results[0], LimitResult)
    assert not results[0].allowed
    assert isinstance(results[1], CountResult)
    assert results[1].count == 1


async def test_revocation(store: Store) -> None:
    key = keys.revocation_key("token-1")
    spec = limit("after-revocation", limit=3)
    (fresh, _) = await store.execute(plan(RevocationCheck(key), LimitCheck((spec,))))
    assert fresh == RevocationResult(False)
    await store.revoke("token-1", 60)
    results = await store.execute(plan(RevocationCheck(key), LimitCheck((spec,))))
    assert results == (RevocationResult(True), None)


async def test_cohort_membership_is_reported_once(store: Store) -> None:
    counter = keys.cohort_counter_key(POLICY, "spam", "ip=192.0.2.9")
    member = keys.member_key(POLICY, "spam", "ip=192.0.2.9")
    count = CohortCount(counter, member, 3, 60_000, 60_000)
    results = [(await store.execute(plan(count)))[0] for _ in range(6)]
    assert [r.count for r in results if isinstance(r, CountResult)] == [1, 2, 3, 4, 5, 6]
    assert [r.became_member for r in results if isinstance(r, CountResult)] == [
        False, False, True, False, False, False,
    ]  # fmt: skip
    assert [r.member for r in results if isinstance(r, CountResult)] == [
        False, False, True, True, True, True,
    ]  # fmt: skip
    (active,) = await store.execute(plan(ActiveCheck((member,), (True,))))
    assert isinstance(active, ActiveResult)
    assert active.values == ("1",)


async def test_concurrent_counts_make_one_member(store: Store) -> None:
    counter = keys.cohort_counter_key(POLICY, "burst", "ip=192.0.2.7")
    member = keys.member_key(POLICY, "burst", "ip=192.0.2.7")
    count = CohortCount(counter, member, 10, 60_000, 60_000)
    results = await asyncio.gather(*(store.execute(plan(count)) for _ in range(30)))
    became = [r[0] for r in results if isinstance(r[0], CountResult) and r[0].became_member]
    assert len(became) == 1
    assert became[0].count == 10


async def test_unblock_removes_blocks_and_memberships_of_that_client(store: Store) -> None:
    blocked = keys.block_key(POLICY, "ip", "192.0.2.1")
    member = keys.member_key(POLICY, "spam", "ip=192.0.2.1")
    other_member = keys.member_key(POLICY, "spam", "ip=192.0.2.2")
    other_policy = keys.block_key("shop/other", "ip", "192.0.2.1")
    everything = (blocked, member, other_member, other_policy)
    await store.execute(plan(BlockSet(everything, 60_000, "1")))
    removed = await store.unblock(POLICY, "ip", "192.0.2.1")
    assert removed == 2
    (active,) = await store.execute(plan(ActiveCheck(everything, (True,) * 4)))
    assert isinstance(active, ActiveResult)
    assert active.values == (None, None, "1", "1")


async def test_block_ttl_expires(store: Store) -> None:
    block = keys.block_key(POLICY, "subject", "mallory")
    await store.execute(plan(BlockSet((block,), 150, "honeypot")))
    (present,) = await store.execute(plan(ActiveCheck((block,), (True,))))
    assert isinstance(present, ActiveResult)
    assert present.values == ("honeypot",)
    await asyncio.sleep(0.3)
    (gone,) = await store.execute(plan(ActiveCheck((block,), (True,))))
    assert gone == ActiveResult((None,), (0,))


async def test_token_bucket_allows_its_burst_then_its_rate(store: Store) -> None:
    # 2 per 10 s with a bucket of 5: five at once, then one every 5 s.
    spec = limit("bucket", algorithm="token_bucket", limit=2, period_ms=10_000, burst=5)
    results = [await consume(store, spec) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.states[0].remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    assert 4_500 < results[5].states[0].retry_after_ms <= 5_000


async def test_cost_consumes_several_units(store: Store) -> None:
    spec = limit("budget", who="subject=alice", limit=12, cost=5)
    results = [await consume(store, spec) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert [r.states[0].remaining for r in results] == [7, 2, 2]
    cheap = await consume(store, limit("budget", who="subject=alice", limit=12, cost=2))
    assert cheap.allowed
    assert cheap.states[0].remaining == 0


async def test_a_lower_limit_on_the_same_key_applies_at_once(store: Store) -> None:
    # Per-plan limits and riskScaling change the limit of one key between requests.
    gold = limit("per-plan", limit=10)
    for _ in range(4):
        assert (await consume(store, gold)).allowed
    free = await consume(store, limit("per-plan", limit=3))
    assert not free.allowed
    assert free.states[0].remaining == 0


async def test_sliding_window_has_no_double_burst_at_the_boundary(store: Store) -> None:
    period = 1000
    sliding = limit("edge-sliding", limit=10, period_ms=period)
    fixed = limit("edge-fixed", algorithm="fixed_window", limit=10, period_ms=period)
    await sleep_until_window_offset(period, 700)
    first = [await consume(store, sliding, fixed) for _ in range(10)]
    assert all(r.allowed for r in first)
    await sleep_until_window_offset(period, 100)
    sliding_again = [(await consume(store, sliding)).allowed for _ in range(10)]
    elapsed = time.time() * 1000 % period
    fixed_again = [(await consume(store, fixed)).allowed for _ in range(10)]
    assert fixed_again == [True] * 10  # the double burst a fixed window allows
    # e ms into the window, the previous window still weighs 10 * (1000 - e) / 1000:
    # at most 10 * e / 1000 fit (1 at about 100 ms).
    assert 1 <= sum(sliding_again) <= max(1, int(10 * elapsed / period))


async def test_retry_after_is_when_a_request_fits_again(store: Store) -> None:
    spec = limit("retry", limit=2, period_ms=400)
    await sleep_until_window_offset(400, 20)
    for _ in range(2):
        assert (await consume(store, spec)).allowed
    denied = await consume(store, spec)
    assert not denied.allowed
    wait_ms = denied.states[0].retry_after_ms
    assert 0 < wait_ms <= 800
    await asyncio.sleep(wait_ms / 1000 + 0.03)
    assert (await consume(store, spec)).allowed


async def test_fixed_window_reset_is_utc_aligned(store: Store) -> None:
    day = 86_400_000
    result = await consume(
        store, limit("daily", algorithm="fixed_window", limit=100, period_ms=day)
    )
    until_midnight = day - int(time.time() * 1000) % day
    assert abs(result.states[0].reset_ms - until_midnight) < 1_000


async def test_memory_store_runs_the_same_plan_as_fallback(store: Store) -> None:
    # Under failureMode: open the engine re-runs the very plan on a MemoryStore.
    spec = limit("fallback", limit=2)
    operations = plan(
        ActiveCheck((keys.block_key(POLICY, "ip", "192.0.2.1"),), (True,)),
        RevocationCheck(keys.revocation_key("t")),
        LimitCheck((spec,)),
        CohortCount(
            keys.cohort_counter_key(POLICY, "c", "ip=192.0.2.1"),
            keys.member_key(POLICY, "c", "ip=192.0.2.1"),
            2,
            60_000,
            60_000,
        ),
    )
    fallback = MemoryStore()
    for results in (await store.execute(operations), await fallback.execute(operations)):
        assert results[0] == ActiveResult((None,), (0,))
        assert results[1] == RevocationResult(False)
        assert isinstance(results[2], LimitResult)
        assert results[2].allowed
        assert results[3] == CountResult(1, False, False)
