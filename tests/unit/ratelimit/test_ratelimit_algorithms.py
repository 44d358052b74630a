"""The rate-limit arithmetic, with explicit clocks (no sleeping)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.ratelimit.algorithms import (
    Outcome,
    fixed_window,
    sliding_count,
    sliding_window,
    token_bucket,
)

SECOND = 1000
T0 = 1_699_920_000_000  # a UTC midnight: a window boundary for every period below (ms)


def run_sliding(times_ms: list[int], limit: int, period: int) -> list[Outcome]:
    state: tuple[int, ...] | None = None
    outcomes = []
    for now in times_ms:
        outcome = sliding_window(state, now, limit, period)
        if outcome.allowed:
            state = outcome.state
        outcomes.append(outcome)
    return outcomes


def test_sliding_window_counts_down_then_denies() -> None:
    outcomes = run_sliding([T0 + i for i in range(6)], limit=5, period=60 * SECOND)
    assert [o.allowed for o in outcomes] == [True] * 5 + [False]
    assert [o.remaining for o in outcomes] == [4, 3, 2, 1, 0, 0]
    assert outcomes[0].reset_ms == 60 * SECOND


def test_sliding_window_weights_the_previous_window() -> None:
    period = 10 * SECOND
    # 10 requests at the end of one window, then the next window starts.
    state: tuple[int, ...] | None = None
    for i in range(10):
        outcome = sliding_window(state, T0 + 9_990 + i, 10, period)
        assert outcome.allowed
        state = outcome.state
    # 2.5 s into the next window 75 % of the previous one still counts: 7.5 used.
    at = T0 + period + 2_500
    first = sliding_window(state, at, 10, period)
    assert first.allowed
    assert first.remaining == 1  # 10 - 7.5 - 1 = 1.5, rounded down
    second = sliding_window(first.state, at, 10, period)
    assert second.allowed
    third = sliding_window(second.state, at, 10, period)
    assert not third.allowed
    # It fits once the previous window's weight falls to 7/10: at 3 s into the window.
    assert third.retry_after_ms == 500
    assert sliding_window(second.state, at + 500, 10, period).allowed
    assert not sliding_window(second.state, at + 499, 10, period).allowed


def test_sliding_window_retry_in_the_next_window() -> None:
    period = 10 * SECOND
    outcomes = run_sliding([T0 + 1_000] * 4, limit=3, period=period)
    denied = outcomes[3]
    assert not denied.allowed
    # Full for the rest of this window (9 s); next window the 3 fade: 1 fits after 1/3.
    assert denied.retry_after_ms == 9_000 + 3_334
    state = outcomes[2].state
    assert sliding_window(state, T0 + 1_000 + denied.retry_after_ms, 3, period).allowed
    assert not sliding_window(state, T0 + 1_000 + denied.retry_after_ms - 1, 3, period).allowed


def test_cost_above_the_limit_never_fits() -> None:
    outcome = sliding_window(None, T0, 5, SECOND, cost=6)
    assert not outcome.allowed
    assert outcome.remaining == 5
    assert outcome.retry_after_ms > 0


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 50),
    period=st.sampled_from([1_000, 7_000, 60_000]),
    gaps=st.lists(st.integers(0, 3_000), min_size=1, max_size=300),
)
def test_sliding_window_never_exceeds_the_limit_in_a_fixed_window(
    limit: int, period: int, gaps: list[int]
) -> None:
    now = T0
    times = []
    for gap in gaps:
        now += gap
        times.append(now)
    outcomes = run_sliding(times, limit, period)
    per_window: dict[int, int] = {}
    admitted: list[tuple[int, int]] = []  # (time, allowed so far in its window)
    for at, outcome in zip(times, outcomes, strict=True):
        if outcome.allowed:
            per_window[at // period] = per_window.get(at // period, 0) + 1
            admitted.append((at, per_window[at // period]))
        else:
            assert outcome.retry_after_ms > 0
    assert all(count <= limit for count in per_window.values())
    # No double burst at a boundary: whenever a request is admitted, the previous
    # window's whole count, weighted by its remaining overlap, plus this window's
    # count so far stays within the limit.
    for at, so_far in admitted:
        window, elapsed = divmod(at, period)
        previous = per_window.get(window - 1, 0)
        assert previous * (period - elapsed) + so_far * period <= limit * period


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 20),
    period=st.sampled_from([1_000, 60_000]),
    gaps=st.lists(st.integers(0, 500), min_size=1, max_size=200),
)
def test_retry_after_is_exact(limit: int, period: int, gaps: list[int]) -> None:
    """A denied request fits exactly retry_after_ms later, not a millisecond sooner."""
    now = T0
    state: tuple[int, ...] | None = None
    for gap in gaps:
        now += gap
        outcome = sliding_window(state, now, limit, period)
        if outcome.allowed:
            state = outcome.state
            continue
        wait = outcome.retry_after_ms
        assert sliding_window(state, now + wait, limit, period).allowed
        if wait > 1:
            assert not sliding_window(state, now + wait - 1, limit, period).allowed


def test_fixed_window_is_aligned_to_utc() -> None:
    day = 86_400 * SECOND
    midnight = T0 - T0 % day
    outcome = fixed_window(None, midnight + 3_600 * SECOND, 100, day)
    assert outcome.allowed
    assert outcome.reset_ms == day - 3_600 * SECOND
    state = outcome.state
    for _ in range(99):
        outcome = fixed_window(state, midnight + 7_200 * SECOND, 100, day)
        state = outcome.state
    denied = fixed_window(state, midnight + 7_200 * SECOND, 100, day)
    assert not denied.allowed
    assert denied.retry_after_ms == day - 7_200 * SECOND
    # A new UTC day starts from zero: the double burst fixed windows allow.
    assert fixed_window(state, midnight + day, 100, day).remaining == 99


def test_token_bucket_burst_then_rate() -> None:
    # 2 per 10 s, bucket of 5.
    state: tuple[int, ...] | None = None
    now_us = T0 * 1000
    outcomes = []
    for _ in range(6):
        outcome = token_bucket(state, now_us, 2, 10 * SECOND, burst=5)
        if outcome.allowed:
            state = outcome.state
        outcomes.append(outcome)
    assert [o.allowed for o in outcomes] == [True] * 5 + [False]
    assert [o.remaining for o in outcomes] == [4, 3, 2, 1, 0, 0]
    assert outcomes[5].retry_after_ms == 5_000
    assert outcomes[4].reset_ms == 25_000  # the bucket is full again after 5 tokens
    assert token_bucket(state, now_us + 5_000_000, 2, 10 * SECOND, burst=5).allowed
    assert not token_bucket(state, now_us + 4_999_000, 2, 10 * SECOND, burst=5).allowed


def test_token_bucket_without_burst_holds_limit() -> None:
    state: tuple[int, ...] | None = None
    allowed = 0
    for _ in range(30):
        outcome = token_bucket(state, T0 * 1000, 20, 60 * SECOND)
        if outcome.allowed:
            state = outcome.state
            allowed += 1
    assert allowed == 20


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 30),
    burst=st.integers(0, 40),
    gaps_ms=st.lists(st.integers(0, 400), min_size=1, max_size=200),
)
def test_token_bucket_never_exceeds_burst_plus_rate(
    limit: int, burst: int, gaps_ms: list[int]
) -> None:
    period = SECOND
    now_us = T0 * 1000
    state: tuple[int, ...] | None = None
    allowed = 0
    for gap in gaps_ms:
        now_us += gap * 1000
        outcome = token_bucket(state, now_us, limit, period, burst=burst)
        if outcome.allowed:
            state = outcome.state
            allowed += 1
    elapsed_ms = sum(gaps_ms)
    assert allowed <= (burst or limit) + limit * elapsed_ms // period + 1


def test_sliding_count_reaches_threshold() -> None:
    state: tuple[int, ...] | None = None
    counts = []
    for i in range(5):
        count, state, ttl = sliding_count(state, T0 + i, 60 * SECOND)
        counts.append(count)
        assert ttl == 120 * SECOND - i
    assert counts == [1, 2, 3, 4, 5]
    count, state, _ = sliding_count(state, T0 + 60 * SECOND + 30 * SECOND, 60 * SECOND)
    assert count == 3  # half of the 5 still weighs in (2.5), plus this one, rounded down
