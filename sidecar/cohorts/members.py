"""Who is in a cohort right now: the admin API and ``abuse_sidecar_cohort_members``.

- ``GET /cohorts/members?policy=ns/name[&cohort=NAME]`` lists current members with
  the membership time left;
- ``DELETE /cohorts/members?policy=ns/name&cohort=NAME&key=ip%3D203.0.113.7`` ends
  one membership (and forgets its count, so the next event does not re-admit it).

The gauge is refreshed from the store every ``interval_s`` (memberships end by
expiry, which nobody is told about) and right after a removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sidecar.compiled.snapshot import PolicySnapshot
from sidecar.errors import StoreUnavailable
from sidecar.observability import metrics
from sidecar.steps.cohorts import CohortStep
from sidecar.stores.base import CohortMember, Store

log = logging.getLogger("sidecar.cohorts")

Query = dict[str, list[str]]
Answer = tuple[int, Any]


def cohorts_of(snapshot: PolicySnapshot) -> dict[str, tuple[str, ...]]:
    """Policy id → the names of its cohorts, for every loaded policy that has any."""
    out: dict[str, tuple[str, ...]] = {}
    for pid, policy in snapshot.index.by_id.items():
        for step in policy.steps:
            if isinstance(step, CohortStep):
                out[pid] = step.cohort_names
    return out


def _one(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values and values[-1] else None


class CohortMembers:
    def __init__(
        self, store: Store, snapshot: Callable[[], PolicySnapshot], interval_s: float = 15.0
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._interval = interval_s
        self._published: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- admin routes ----------------------------------------------------------------

    async def list_members(self, query: Query) -> Answer:
        policy = _one(query, "policy")
        if policy is None:
            return 400, {"error": "missing query parameter policy=ns/name"}
        cohort = _one(query, "cohort")
        try:
            members = await self._store.members(policy)
        except StoreUnavailable as exc:
            return 503, {"error": str(exc)}
        now = time.time()
        listed = [
            {
                "cohort": m.cohort,
                "key": m.key,
                "ttlSeconds": round(m.ttl_ms / 1000, 3),
                "expiresAt": round(now + m.ttl_ms / 1000, 3),
            }
            for m in sorted(members, key=lambda m: (m.cohort, m.key))
            if cohort is None or m.cohort == cohort
        ]
        known = cohorts_of(self._snapshot()).get(policy)
        body: dict[str, Any] = {"policy": policy, "members": listed}
        if known is None:
            body["warning"] = f"policy {policy} is not loaded; listing what the store still holds"
        else:
            self._publish(policy, known, members)  # fresher than the next periodic refresh
        return 200, body

    async def remove_member(self, query: Query) -> Answer:
        policy, cohort, key = _one(query, "policy"), _one(query, "cohort"), _one(query, "key")
        if policy is None or cohort is None or key is None:
            return 400, {
                "error": "DELETE needs policy=ns/name, cohort=NAME and key=DIMENSION=VALUE "
                "(as GET /cohorts/members lists it, URL-encoded)"
            }
        try:
            removed = await self._store.remove_member(policy, cohort, key)
        except StoreUnavailable as exc:
            return 503, {"error": str(exc)}
        if not removed:
            return 404, {
                "error": f"{key} is not a member of cohort {cohort} on {policy}",
                "removed": False,
            }
        log.info("cohort membership removed by the admin API: %s %s %s", policy, cohort, key)
        with contextlib.suppress(StoreUnavailable):
            await self.refresh()
        return 200, {"policy": policy, "cohort": cohort, "key": key, "removed": True}

    # -- the gauge -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Set the gauge for every cohort of every loaded policy; drop vanished ones."""
        seen: set[tuple[str, str]] = set()
        for pid, names in cohorts_of(self._snapshot()).items():
            self._publish(pid, names, await self._store.members(pid))
            seen.update((pid, name) for name in names)
        for gone in self._published - seen:
            with contextlib.suppress(KeyError):
                metrics.COHORT_MEMBERS.remove(*gone)
        self._published = seen

    def _publish(
        self, policy: str, names: tuple[str, ...], members: tuple[CohortMember, ...]
    ) -> None:
        counts = dict.fromkeys(names, 0)
        for member in members:
            if member.cohort in counts:
                counts[member.cohort] += 1
        for name, count in counts.items():
            metrics.COHORT_MEMBERS.labels(policy, name).set(count)
            self._published.add((policy, name))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cohort-members-gauge")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                log.debug("cohort gauge not refreshed: %s", exc)
            except Exception:
                log.exception("cohort gauge refresh failed")
            await asyncio.sleep(self._interval)
