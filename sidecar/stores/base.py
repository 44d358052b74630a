"""The Store protocol and the per-Check plan it executes in one round trip.

Steps do not talk to a store. During the local phase they add *operations* to a
StorePlan; the engine executes the whole plan with one ``Store.execute`` call (one
Redis EVALSHA), then hands each step the results of its own operations. The store
runs the operations in plan order and, unless the plan is a shadow plan, stops at
the first operation that denies: a request refused by one limit consumes nothing
further (contract order: blocks → revocation → limits/budget → cohort counting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Algorithm = Literal["sliding_window", "token_bucket", "fixed_window"]


@dataclass(frozen=True, slots=True)
class ActiveCheck:
    """Which of these keys exist (honeypot blocks, cohort memberships).

    ``denying[i]`` says whether key i, when present, stops the plan (a block or a
    throttle) or only informs (a ``flag`` cohort)."""

    keys: tuple[str, ...]
    denying: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class RevocationCheck:
    key: str


@dataclass(frozen=True, slots=True)
class LimitSpec:
    key: str
    algorithm: Algorithm
    limit: int
    period_ms: int
    burst: int = 0  # token_bucket capacity; 0 means ``limit``
    cost: int = 1


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """All limits are checked; they are consumed together only if every one has room."""

    limits: tuple[LimitSpec, ...]


@dataclass(frozen=True, slots=True)
class CohortCount:
    """Count one event; reaching ``threshold`` within ``period_ms`` makes the key a
    member (``member_key`` set for ``member_ttl_ms``). Membership is reported once."""

    counter_key: str
    member_key: str
    threshold: int
    period_ms: int
    member_ttl_ms: int


@dataclass(frozen=True, slots=True)
class BlockSet:
    keys: tuple[str, ...]
    ttl_ms: int
    value: str


Operation = ActiveCheck | RevocationCheck | LimitCheck | CohortCount | BlockSet


@dataclass(frozen=True, slots=True)
class ActiveResult:
    values: tuple[str | None, ...]  # value of each key, None when absent
    ttls_ms: tuple[int, ...]  # remaining TTL of each present key, 0 when absent

    @property
    def denies(self) -> bool:
        return False  # interpreted by the step with ActiveCheck.denying


@dataclass(frozen=True, slots=True)
class RevocationResult:
    revoked: bool


@dataclass(frozen=True, slots=True)
class LimitState:
    remaining: int  # after this request (when allowed) or now (when denied)
    reset_ms: int  # until the window frees capacity again
    retry_after_ms: int  # 0 when this limit had room


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    states: tuple[LimitState, ...]


@dataclass(frozen=True, slots=True)
class CountResult:
    count: int
    became_member: bool  # this event made the key a member (notify exactly once)
    member: bool


@dataclass(frozen=True, slots=True)
class BlockSetResult:
    ok: bool = True


OpResult = ActiveResult | RevocationResult | LimitResult | CountResult | BlockSetResult
NOT_RUN: None = None  # result slot of an operation after the plan stopped at a deny


@dataclass(frozen=True, slots=True)
class CohortMember:
    """One current cohort membership (admin API, ``abuse_sidecar_cohort_members``)."""

    cohort: str
    key: str  # as the cohort's ``by`` names it, e.g. ``ip=203.0.113.7``
    ttl_ms: int  # membership left


@dataclass(frozen=True, slots=True)
class StorePlan:
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
