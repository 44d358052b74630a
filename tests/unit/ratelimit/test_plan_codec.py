"""The plan codec builds the same bytes redis-py would, and reads the script's reply."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from sidecar.stores.base import (
    ActiveCheck,
    ActiveResult,
    BlockSet,
    BlockSetResult,
    CohortCount,
    CountResult,
    LimitCheck,
    LimitResult,
    LimitSpec,
    LimitState,
    Operation,
    RevocationCheck,
    RevocationResult,
)
from sidecar.stores.plan_codec import PlanCodec, denies

SHA = "0123456789abcdef0123456789abcdef01234567"

OPERATIONS = (
    ActiveCheck(("as:{p/a}:blk:ip:1", "as:{p/a}:mem:c:ip=1"), (True, False)),
    RevocationCheck("as:{rv}:jti"),
    LimitCheck(
        (
            LimitSpec("as:{p/a}:rl:a:ip=1", "sliding_window", 10, 60_000),
            LimitSpec("as:{p/a}:rl:b:ip=1", "token_bucket", 5, 1_000, 8),
            LimitSpec(
                "as:{p/a}:rl:graphql.costBudget:subject=\u00e9",
                "fixed_window",
                900,
                3_600_000,
                0,
                37,
            ),
        )
    ),
    CohortCount("as:{p/a}:cnt:c:ip=1", "as:{p/a}:mem:c:ip=1", 3, 60_000, 86_400_000),
    BlockSet(("as:{p/a}:blk:ip:1",), 5_000, "honeypot"),
)


def test_encoding_matches_redis_py() -> None:
    expected_args: list[str | int] = [
        "EVALSHA", SHA, 8,
        "as:{p/a}:blk:ip:1", "as:{p/a}:mem:c:ip=1", "as:{rv}:jti",
        "as:{p/a}:rl:a:ip=1", "as:{p/a}:rl:b:ip=1", "as:{p/a}:rl:graphql.costBudget:subject=\u00e9",
        "as:{p/a}:cnt:c:ip=1", "as:{p/a}:mem:c:ip=1",
        "1",
        "A", 2, "1", "0",
        "R",
        "L", 3, "s", 10, 60_000, 0, 1, "t", 5, 1_000, 8, 1, "f", 900, 3_600_000, 0, 37,
        "C", 3, 60_000, 86_400_000,
        "B", 1, 5_000, "honeypot",
    ]  # fmt: skip
    # BlockSet's key is a 9th key.
    expected_args.insert(11, "as:{p/a}:blk:ip:1")
    expected_args[2] = 9
    packed = b"".join(Connection().pack_command(*expected_args))
    codec = PlanCodec(SHA)
    assert codec.encode(OPERATIONS, shadow=True) == packed
    assert codec.encode(OPERATIONS, shadow=True) == packed  # from cached fragments


def test_decoding_the_reply() -> None:
    reply = [
        5,
        b"honeypot", 1200, None, 0,
        0,
        0, 9, 100, 0, 4, 2000, 0, 863, 900, 0,
        2, 0, 0,
        1,
    ]  # fmt: skip
    results = PlanCodec.decode(OPERATIONS, reply)
    assert results == [
        ActiveResult(("honeypot", None), (1200, 0)),
        RevocationResult(False),
        LimitResult(
            False, (LimitState(9, 100, 0), LimitState(4, 2000, 0), LimitState(863, 900, 0))
        ),
        CountResult(2, False, False),
        BlockSetResult(),
    ]
    assert denies(OPERATIONS[0], results[0])  # the present key denies
    assert not denies(OPERATIONS[1], results[1])
    assert denies(OPERATIONS[2], results[2])


def test_operations_after_a_stop_are_not_run() -> None:
    reply = [2, b"honeypot", 1200, None, 0, 1]
    results = PlanCodec.decode(OPERATIONS, reply)
    assert results[1] == RevocationResult(True)
    assert results[2:] == [None, None, None]


_keys = st.text(min_size=1, max_size=30)
_limit_specs = st.builds(
    LimitSpec,
    _keys,
    st.sampled_from(["sliding_window", "token_bucket", "fixed_window"]),
    st.integers(min_value=1, max_value=10**9),
    st.integers(min_value=1, max_value=10**9),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=1, max_value=10**4),
)
_operations = st.one_of(
    st.builds(LimitCheck, st.lists(_limit_specs, min_size=1, max_size=4).map(tuple)),
    st.lists(st.tuples(_keys, st.booleans()), min_size=1, max_size=3).map(
        lambda pairs: ActiveCheck(tuple(k for k, _ in pairs), tuple(d for _, d in pairs))
    ),
    st.builds(RevocationCheck, _keys),
    st.builds(
        CohortCount,
        _keys,
        _keys,
        st.integers(min_value=1, max_value=10**6),
        st.integers(min_value=1, max_value=10**9),
        st.integers(min_value=1, max_value=10**9),
    ),
    st.builds(
        BlockSet,
        st.lists(_keys, min_size=1, max_size=2).map(tuple),
        st.integers(min_value=1, max_value=10**9),
        _keys,
    ),
)
_CODES = {"sliding_window": "s", "token_bucket": "t", "fixed_window": "f"}


def _redis_py_args(operations: list[Operation], shadow: bool) -> list[str | int]:
    """The script's argument layout (check.lua's header), spelled out independently."""
    keys: list[str | int] = []
    args: list[str | int] = ["1" if shadow else "0"]
    for op in operations:
        if isinstance(op, LimitCheck):
            args += ["L", len(op.limits)]
            for spec in op.limits:
                keys.append(spec.key)
                args += [_CODES[spec.algorithm], spec.limit, spec.period_ms, spec.burst, spec.cost]
        elif isinstance(op, ActiveCheck):
            keys += op.keys
            args += ["A", len(op.keys), *("1" if d else "0" for d in op.denying)]
        elif isinstance(op, RevocationCheck):
            keys.append(op.key)
            args.append("R")
        elif isinstance(op, CohortCount):
            keys += [op.counter_key, op.member_key]
            args += ["C", op.threshold, op.period_ms, op.member_ttl_ms]
        else:
            assert isinstance(op, BlockSet)
            keys += op.keys
            args += ["B", len(op.keys), op.ttl_ms, op.value]
    return ["EVALSHA", SHA, len(keys), *keys, *args]


@given(st.lists(_operations, max_size=6), st.booleans())
def test_any_plan_encodes_as_redis_py_packs_it(operations: list[Operation], shadow: bool) -> None:
    codec = PlanCodec(SHA)
    packed = b"".join(Connection().pack_command(*_redis_py_args(operations, shadow)))
    assert codec.encode(operations, shadow) == packed
    assert codec.encode(operations, shadow) == packed  # again, from cached fragments
