"""The Store protocol and the per-Check plan it executes in one round trip.

Operations and results are NamedTuples: immutable like frozen dataclasses, and
built several times per Check at a fifth of the cost.

Steps do not talk to a store. During the local phase they add *operations* to a
StorePlan; the engine executes the whole plan with one ``Store.execute`` call (one
Redis EVALSHA), then hands each step the results of its own operations. The store
runs the operations in plan order and, unless the plan is a shadow plan, stops at
the first operation that denies: a request refused by one limit consumes nothing
further (contract order: blocks → revocation → limits/budget → cohort counting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

Algorithm = Literal["sliding_window", "token_bucket", "fixed_window"]


class ActiveCheck(NamedTuple):
    """Which of these keys exist (honeypot blocks, cohort memberships).

    ``denying[i]`` says whether key i, when present, stops the plan (a block or a
    throttle) or only informs (a ``flag`` cohort)."""

    keys: tuple[str, ...]
    denying: tuple[bool, ...]


class RevocationCheck(NamedTuple):
    key: str


class LimitSpec(NamedTuple):
    key: str
    algorithm: Algorithm
    limit: int
    period_ms: int
    burst: int = 0  # token_bucket capacity; 0 means ``limit``
    cost: int = 1


class LimitCheck(NamedTuple):
    """All limits are checked; they are consumed together only if every one has room."""

    limits: tuple[LimitSpec, ...]


class CohortCount(NamedTuple):
    """Count one event; reaching ``threshold`` within ``period_ms`` makes the key a
    member (``member_key`` set for ``member_ttl_ms``). Membership is reported once."""

    counter_key: str
    member_key: str
    threshold: int
    period_ms: int
    member_ttl_ms: int


class BlockSet(NamedTuple):
    keys: tuple[str, ...]
    ttl_ms: int
    value: str


Operation = ActiveCheck | RevocationCheck | LimitCheck | CohortCount | BlockSet


class ActiveResult(NamedTuple):
    values: tuple[str | None, ...]  # value of each key, None when absent
    ttls_ms: tuple[int, ...]  # remaining TTL of each present key, 0 when absent

    @property
    def denies(self) -> bool:
        return False  # interpreted by the step with ActiveCheck.denying


class RevocationResult(NamedTuple):
    revoked: bool


class LimitState(NamedTuple):
    remaining: int  # after this request (when allowed) or now (when denied)
    reset_ms: int  # until the window frees capacity again
    retry_after_ms: int  # 0 when this limit had room


class LimitResult(NamedTuple):
    allowed: bool
    states: tuple[LimitState, ...]


@dataclass(frozen=True, slots=True)  # a NamedTuple's count() would clash
class CountResult:
    count: int
    became_member: bool  # this event made the key a member (notify exactly once)
    member: bool


class BlockSetResult(NamedTuple):
    ok: bool = True


OpResult = ActiveResult | RevocationResult | LimitResult | CountResult | BlockSetResult
NOT_RUN: None = None  # result slot of an operation after the plan stopped at a deny


@dataclass(frozen=True, slots=True)
class CohortMember:
    """One current cohort membership (admin API, ``abuse_sidecar_cohort_members``)."""

    cohort: str
    key: str  # as the cohort's ``by`` names it, e.g. ``ip=203.0.113.7``
    ttl_ms: int  # membership left


class StorePlan(NamedTuple):
    operations: tuple[Operation, ...]
    shadow: bool = False  # evaluate everything, never stop at a deny


class Store(Protocol):
    """Shared state behind the pipeline. Implementations raise
    ``sidecar.errors.StoreUnavailable`` for any backend failure or timeout."""

    name: str

    async def execute(self, plan: StorePlan) -> tuple[OpResult | None, ...]:
        """Run the plan atomically; one result per operation, None after a stop."""

    async def revoke(self, jti: str, ttl_s: int) -> None: ...

    async def unblock(self, policy: str, kind: str, value: str) -> int:
        """Remove blocks and memberships of ``kind`` (ip|subject) ``value`` on a policy."""

    async def members(self, policy: str) -> tuple[CohortMember, ...]:
        """Every current cohort membership on a policy."""

    async def remove_member(self, policy: str, cohort: str, key: str) -> bool:
        """End one membership now; False when there was none."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    async def close(self) -> None: ...
