"""Rate-limit arithmetic as pure functions over small integer states.

These functions are the reference semantics of the three algorithms. The
in-process store calls them directly; ``stores/lua/check.lua`` implements the
same integer arithmetic line by line (the behaviour suite runs both), and the
unit tests drive them with explicit clocks.

Everything is integer so that Python and Redis' Lua (IEEE doubles, exact below
2**53) compute identical answers: times are milliseconds since the Unix epoch
(microseconds for the token bucket), and the sliding window keeps its weighted
count scaled by the period instead of as a fraction.

* ``sliding_window``: the two-window weighted counter. The previous fixed
  window's count is weighted by how much of it still overlaps the sliding
  window, so a client cannot spend its limit at the end of one window and again
  at the start of the next (the fixed-window double burst). Two integers of
  state per key, whatever the limit; an exact log would keep ``limit`` entries.
* ``token_bucket``: GCRA (the generic cell rate algorithm): one "theoretical
  arrival time" per key; ``burst`` is the bucket's capacity.
* ``fixed_window``: counts per window aligned to multiples of the period since
  the Unix epoch, so a ``1d`` quota resets at 00:00 UTC and a ``1h`` one on the
  hour.
"""

from __future__ import annotations

from dataclasses import dataclass

# States as the stores keep them (plain int tuples):
SlidingState = tuple[int, ...]  # (window index, count in it, count in the previous one)
FixedState = tuple[int, ...]  # (window index, count in it)
BucketState = tuple[int, ...]  # (theoretical arrival time in µs,)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One limit's answer to one request.

    ``remaining`` is what is left after this request when it fits, or what is
    left now when it does not. ``reset_ms`` is when the current window ends (the
    bucket is full again); ``retry_after_ms`` is how long until a request of the
    same cost would fit (0 when it fits). ``state``/``ttl_ms`` are what the store
    writes when the request is consumed.
    """

    allowed: bool
    remaining: int
    reset_ms: int
    retry_after_ms: int
    state: tuple[int, ...]
    ttl_ms: int


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def sliding_window(
    state: SlidingState | None, now_ms: int, limit: int, period_ms: int, cost: int = 1
) -> Outcome:
    window, elapsed = divmod(now_ms, period_ms)
    current = previous = 0
    if state is not None:
        stored_window, stored_current, stored_previous = state
        if stored_window >= window:
            # Same window, or the wall clock stepped back: keep what was counted.
            window, current, previous = stored_window, stored_current, stored_previous
        elif stored_window == window - 1:
            previous = stored_current
    window_left = period_ms - elapsed
    # The weighted count, times period_ms so that it stays an integer.
    used = previous * window_left + current * period_ms
    capacity = limit * period_ms
    need = cost * period_ms
    if used + need <= capacity:
        return Outcome(
            True,
            (capacity - used - need) // period_ms,
            window_left,
            0,
            (window, current + cost, previous),
            window_left + period_ms,
        )
    if cost > limit:
        retry = window_left + period_ms  # never fits; say "after a full period"
    elif current + cost <= limit:
        # Fits later in this window, once the previous window has faded enough:
        # the smallest elapsed e with previous * (period - e) <= spare * period.
        spare = (limit - current - cost) * period_ms
        retry = period_ms - spare // previous - elapsed
    else:
        # Fits only in the next window, where this window's count becomes "previous".
        spare = (limit - cost) * period_ms
        retry = window_left + period_ms - spare // current
    return Outcome(False, max(0, capacity - used) // period_ms, retry, retry, (), 0)


def fixed_window(
    state: FixedState | None, now_ms: int, limit: int, period_ms: int, cost: int = 1
) -> Outcome:
    window, elapsed = divmod(now_ms, period_ms)
    count = 0
    if state is not None and state[0] >= window:
        window, count = state[0], state[1]
    window_left = period_ms - elapsed
    if count + cost <= limit:
        return Outcome(
            True, limit - count - cost, window_left, 0, (window, count + cost), window_left
        )
    return Outcome(False, max(0, limit - count), window_left, window_left, (), 0)


def emission_interval_us(limit: int, period_ms: int) -> int:
    """Microseconds between two tokens, rounded up (the rate never exceeds the limit)."""
    return _ceil_div(period_ms * 1000, limit)


def token_bucket(
    state: BucketState | None,
    now_us: int,
    limit: int,
    period_ms: int,
    *,
    burst: int = 0,
    cost: int = 1,
) -> Outcome:
    interval = emission_interval_us(limit, period_ms)
    capacity = (burst or limit) * interval
    tat = now_us
    if state is not None and state[0] > now_us:
        tat = state[0]
    new_tat = tat + cost * interval
    allow_at = new_tat - capacity
    if allow_at <= now_us:
        full_in_ms = _ceil_div(new_tat - now_us, 1000)
        return Outcome(
            True,
            (capacity - (new_tat - now_us)) // interval,
            full_in_ms,
            0,
            (new_tat,),
            max(1, full_in_ms),
        )
    retry = _ceil_div(allow_at - now_us, 1000)
    return Outcome(False, max(0, (capacity - (tat - now_us)) // interval), retry, retry, (), 0)


def sliding_count(
    state: SlidingState | None, now_ms: int, period_ms: int
) -> tuple[int, SlidingState, int]:
    """Count one event in a sliding window: (count including it, new state, state TTL ms).

    The same weighted two-window estimate as ``sliding_window``, rounded down."""
    window, elapsed = divmod(now_ms, period_ms)
    current = previous = 0
    if state is not None:
        stored_window, stored_current, stored_previous = state
        if stored_window >= window:
            window, current, previous = stored_window, stored_current, stored_previous
        elif stored_window == window - 1:
            previous = stored_current
    current += 1
    window_left = period_ms - elapsed
    count = (previous * window_left + current * period_ms) // period_ms
    return count, (window, current, previous), window_left + period_ms
