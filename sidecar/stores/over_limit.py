"""Keys known to be over their limit, answered without a round trip.

When the shared store denies a limit, it says how long until a request of that
cost could fit (``retry_after_ms``). No other replica can make room sooner (they
only ever consume), so until then a request with the same limit and at least
the same cost is denied here, as envoyproxy/ratelimit's local over-limit cache
does. Deadlines are measured from when the denied plan was *sent*, so the local
answer never outlives the store's.
"""

from __future__ import annotations

from sidecar.stores.base import LimitCheck, LimitResult, LimitSpec, LimitState

# ``LimitState.remaining`` of the limits of a locally denied check that were not
# looked at: only the denying limit's state is known without asking the store.
REMAINING_UNKNOWN = -1


class OverLimitCache:
    __slots__ = ("_entries", "_max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        # key -> (deadline monotonic s, limit, burst, smallest denied cost)
        self._entries: dict[str, tuple[float, int, int, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, spec: LimitSpec, state: LimitState, sent_at: float) -> None:
        if state.retry_after_ms <= 0 or self._max_entries <= 0:
            return
        entries = self._entries
        if len(entries) >= self._max_entries:
            self._prune(sent_at)
        entries[spec.key] = (
            sent_at + state.retry_after_ms / 1000,
            spec.limit,
            spec.burst,
            spec.cost,
        )

    def denial(self, check: LimitCheck, now: float) -> LimitResult | None:
        """The store's answer to ``check`` if one of its limits is known to be full."""
        entries = self._entries
        for index, spec in enumerate(check.limits):
            entry = entries.get(spec.key)
            if entry is None:
                continue
            deadline, limit, burst, cost = entry
            if deadline <= now:
                del entries[spec.key]
                continue
            if limit != spec.limit or burst != spec.burst or spec.cost < cost:
                continue
            retry_ms = max(1, int((deadline - now) * 1000))
            states = [LimitState(REMAINING_UNKNOWN, 0, 0)] * len(check.limits)
            states[index] = LimitState(0, retry_ms, retry_ms)
            return LimitResult(False, tuple(states))
        return None

    def _prune(self, now: float) -> None:
        live = {key: entry for key, entry in self._entries.items() if entry[0] > now}
        if len(live) >= self._max_entries:
            live.clear()  # all live: forget them rather than grow without bound
        self._entries = live
