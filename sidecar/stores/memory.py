"""The in-process store: one process, state lost on exit.

It is the default store of ``serve`` and the fallback of a Redis store under
``failureMode: open``. It implements exactly the semantics of the Redis script
(``lua/check.lua``) with the same arithmetic (``sidecar.ratelimit.algorithms``),
so the same behaviour suite runs against both.
"""

from __future__ import annotations

import heapq

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.ratelimit import algorithms
from sidecar.stores import keys
from sidecar.stores.base import (
    ActiveCheck,
    ActiveResult,
    BlockSet,
    BlockSetResult,
    CohortCount,
    CohortMember,
    CountResult,
    LimitCheck,
    LimitResult,
    LimitState,
    Operation,
    OpResult,
    RevocationCheck,
    RevocationResult,
    StorePlan,
)

# A stored value: a string (blocks, memberships, revocations) or a limit/counter state.
Value = str | tuple[int, ...]


class _Entry:
    __slots__ = ("expires", "scheduled", "value")

    def __init__(self, value: Value, expires: float, scheduled: float) -> None:
        self.value = value
        self.expires = expires  # monotonic seconds
        self.scheduled = scheduled  # when the sweep heap will next look at this key


class MemoryStore:
    name = "memory"

    def __init__(self, clock: Clock = SYSTEM_CLOCK, max_keys: int = 1_000_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._entries: dict[str, _Entry] = {}
        # At most one live heap entry per key: a key whose expiry moved later is
        # re-queued when its old slot comes up, so counters updated on every
        # request do not grow the heap.
        self._expiries: list[tuple[float, str]] = []

    # -- the one call the pipeline makes -------------------------------------------

    async def execute(self, plan: StorePlan) -> tuple[OpResult | None, ...]:
        # No await inside: the whole plan runs atomically on the event loop.
        return self.execute_now(plan)

    def execute_now(self, plan: StorePlan) -> tuple[OpResult | None, ...]:
        now = self._clock.monotonic()
        self._sweep(now)
        results: list[OpResult | None] = []
        stopped = False
        for op in plan.operations:
            if stopped:
                results.append(None)
                continue
            result, denies = self._run(op, now)
            results.append(result)
            if denies and not plan.shadow:
                stopped = True
        return tuple(results)

    def _run(self, op: Operation, now: float) -> tuple[OpResult, bool]:
        if isinstance(op, LimitCheck):
            return self._limit(op, now)
        if isinstance(op, CohortCount):
            return self._count(op, now), False
        if isinstance(op, ActiveCheck):
            values: list[str | None] = []
            ttls: list[int] = []
            denies = False
            for key, denying in zip(op.keys, op.denying, strict=True):
                entry = self._get(key, now)
                if entry is None or not isinstance(entry.value, str):
                    values.append(None)
                    ttls.append(0)
                    continue
                values.append(entry.value)
                ttls.append(max(1, int((entry.expires - now) * 1000)))
                denies = denies or denying
            return ActiveResult(tuple(values), tuple(ttls)), denies
        if isinstance(op, RevocationCheck):
            revoked = self._get(op.key, now) is not None
            return RevocationResult(revoked), revoked
        if isinstance(op, BlockSet):
            for key in op.keys:
                self._set(key, op.value, now + op.ttl_ms / 1000)
            return BlockSetResult(), False
        raise TypeError(f"the memory store cannot run {type(op).__name__}")

    def _limit(self, op: LimitCheck, now: float) -> tuple[LimitResult, bool]:
        now_us = int(self._clock.now() * 1_000_000)
        now_ms = now_us // 1000
        outcomes: list[algorithms.Outcome] = []
        for spec in op.limits:
            entry = self._get(spec.key, now)
            state = entry.value if entry is not None and isinstance(entry.value, tuple) else None
            if spec.algorithm == "sliding_window":
                outcome = algorithms.sliding_window(
                    state,
                    now_ms,
                    spec.limit,
                    spec.period_ms,
                    spec.cost,
                )
            elif spec.algorithm == "token_bucket":
                outcome = algorithms.token_bucket(
                    state,
                    now_us,
                    spec.limit,
                    spec.period_ms,
                    burst=spec.burst,
                    cost=spec.cost,
                )
            else:
                outcome = algorithms.fixed_window(
                    state,
                    now_ms,
                    spec.limit,
                    spec.period_ms,
                    spec.cost,
                )
            outcomes.append(outcome)
        allowed = all(outcome.allowed for outcome in outcomes)
        states: list[LimitState] = []
        for spec, outcome in zip(op.limits, outcomes, strict=True):
            remaining = outcome.remaining
            if allowed:
                self._set(spec.key, outcome.state, now + outcome.ttl_ms / 1000)
            elif outcome.allowed:
                remaining += spec.cost  # had room, but nothing was consumed
            states.append(LimitState(remaining, outcome.reset_ms, outcome.retry_after_ms))
        return LimitResult(allowed, tuple(states)), not allowed

    def _count(self, op: CohortCount, now: float) -> CountResult:
        now_ms = int(self._clock.now() * 1000)
        entry = self._get(op.counter_key, now)
        state = entry.value if entry is not None and isinstance(entry.value, tuple) else None
        count, new_state, ttl_ms = algorithms.sliding_count(
            state,
            now_ms,
            op.period_ms,
        )
        self._set(op.counter_key, new_state, now + ttl_ms / 1000)
        if self._get(op.member_key, now) is not None:
            return CountResult(count, False, True)
        if count >= op.threshold:
            self._set(op.member_key, "1", now + op.member_ttl_ms / 1000)
            return CountResult(count, True, True)
        return CountResult(count, False, False)

    # -- operations ------------------------------------------------------------------

    async def revoke(self, jti: str, ttl_s: int) -> None:
        now = self._clock.monotonic()
        self._set(keys.revocation_key(jti), "1", now + ttl_s)

    async def unblock(self, policy: str, kind: str, value: str) -> int:
        block = keys.block_key(policy, kind, value)
        member_prefix = f"{keys.PREFIX}:{keys.policy_tag(policy)}:mem:"
        member_suffix = f":{kind}={value}"
        now = self._clock.monotonic()
        doomed = [
            key
            for key, entry in self._entries.items()
            if entry.expires > now
            and (key == block or (key.startswith(member_prefix) and key.endswith(member_suffix)))
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def members(self, policy: str) -> tuple[CohortMember, ...]:
        prefix = f"{keys.PREFIX}:{keys.policy_tag(policy)}:mem:"
        now = self._clock.monotonic()
        found: list[CohortMember] = []
        for key, entry in self._entries.items():
            if key.startswith(prefix) and entry.expires > now:
                cohort, _, member = key[len(prefix) :].partition(":")
                found.append(
                    CohortMember(cohort, member, max(1, int((entry.expires - now) * 1000)))
                )
        return tuple(found)

    async def remove_member(self, policy: str, cohort: str, key: str) -> bool:
        """Also forgets the count, so the next event does not re-admit the key at once."""
        member = keys.member_key(policy, cohort, key)
        present = self._get(member, self._clock.monotonic()) is not None
        if present:
            del self._entries[member]
        self._entries.pop(keys.cohort_counter_key(policy, cohort, key), None)
        return present

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._expiries.clear()

    # -- storage -------------------------------------------------------------------

    def _get(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._entries[key]
            return None
        return entry

    def _set(self, key: str, value: Value, expires: float) -> None:
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_keys:
                self._evict()
            self._entries[key] = _Entry(value, expires, expires)
            heapq.heappush(self._expiries, (expires, key))
            return
        entry.value = value
        entry.expires = expires
        if expires < entry.scheduled:
            entry.scheduled = expires
            heapq.heappush(self._expiries, (expires, key))

    def _sweep(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None or entry.scheduled != when:
                continue  # deleted, or a stale slot of a key re-queued earlier
            if entry.expires <= now:
                del self._entries[key]
            else:
                entry.scheduled = entry.expires
                heapq.heappush(heap, (entry.expires, key))

    def _evict(self) -> None:
        """Make room under ``max_keys``: expired keys first, then the soonest to expire."""
        self._sweep(self._clock.monotonic())
        heap = self._expiries
        while heap and len(self._entries) >= self._max_keys:
            when, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None or entry.scheduled != when:
                continue
            del self._entries[key]
