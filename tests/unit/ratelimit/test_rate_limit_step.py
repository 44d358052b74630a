"""The rate-limit step against the real in-process store."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.model.policy import CostBudgetSpec, RateLimitSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.steps.rate_limits import RateLimitStep, build_rate_limit_step
from sidecar.stores import keys
from sidecar.stores.base import LimitCheck, LimitResult, LimitState, Operation, StorePlan
from sidecar.stores.memory import MemoryStore

POLICY = "shop/reviews"


class FrozenClock:
    """Wall time at a UTC midnight (a boundary of every window here), standing still."""

    def now(self) -> float:
        return 1_699_920_000.0

    def monotonic(self) -> float:
        return 1000.0


def new_store() -> MemoryStore:
    return MemoryStore(FrozenClock())


def rate_limit(**fields: Any) -> RateLimitSpec:
    return RateLimitSpec.model_validate({"name": "per-ip", "limit": 3, "period": "1m", **fields})


def request(
    path: str = "/api/items",
    *,
    method: str = "GET",
    ip: str = "192.0.2.1",
    explain: bool = True,
    headers: dict[str, str] | None = None,
    **facts: Any,
) -> RequestContext:
    ctx = RequestContext(
        method=method,
        path=path,
        raw_path=path,
        query="",
        host="api.example.com",
        headers=headers or {},
        body=b"",
        source_ip=ip,
        explain=explain,
    )
    ctx.client_ip = ip
    for name, value in facts.items():
        setattr(ctx, name, value)
    return ctx


def step_for(*limits: RateLimitSpec, budget: CostBudgetSpec | None = None) -> RateLimitStep:
    step = build_rate_limit_step(POLICY, limits, budget)
    assert step is not None
    return step


async def check(step: RateLimitStep, store: MemoryStore, ctx: RequestContext) -> Deny | None:
    ops: list[Operation] = []
    local = step.evaluate(ctx, ops)
    if local is not None:
        assert not ops
        return local
    if not ops:
        return None
    results = await store.execute(StorePlan(tuple(ops)))
    return step.settle(ctx, results)


def report(ctx: RequestContext) -> dict[str, Any]:
    (entry,) = [r.as_dict() for r in ctx.reports if r.step == "rate_limits"]
    return entry


async def test_allowed_requests_carry_the_ratelimit_headers() -> None:
    step, store = step_for(rate_limit()), new_store()
    ctx = request()
    assert await check(step, store, ctx) is None
    assert ctx.response_headers == [
        ("RateLimit-Policy", '"per-ip";q=3;w=60'),
        ("RateLimit", '"per-ip";r=2;t=60'),
    ]
    entry = report(ctx)
    assert entry["verdict"] == "allow"
    assert entry["limits"][0] | {"reset": 60} == {
        "name": "per-ip", "by": ["ip"], "key": "ip=192.0.2.1", "algorithm": "sliding_window",
        "limit": 3, "periodSeconds": 60, "remaining": 2, "reset": 60,
    }  # fmt: skip


async def test_the_limit_denies_429_with_retry_after() -> None:
    step, store = step_for(rate_limit()), new_store()
    for _ in range(3):
        assert await check(step, store, request()) is None
    ctx = request()
    deny = await check(step, store, ctx)
    assert deny is not None
    assert deny.reason is Reason.RATE_LIMITED
    assert deny.status == 429
    assert deny.rule == "per-ip"
    # Full for this window (60 s); in the next, the 3 fade until one fits (20 s).
    assert dict(deny.headers)["Retry-After"] == "80"
    assert dict(deny.headers)["RateLimit"] == '"per-ip";r=0;t=80'
    assert dict(deny.headers)["RateLimit-Policy"] == '"per-ip";q=3;w=60'
    assert ctx.response_headers == []  # on a deny the headers travel in the Deny
    assert report(ctx)["verdict"] == "deny"


async def test_only_matching_limits_count() -> None:
    step = step_for(
        rate_limit(name="login", match={"methods": ["POST"], "paths": ["/login"]}, limit=1),
        rate_limit(name="all", limit=100),
    )
    store = new_store()
    browse = request("/items")
    assert await check(step, store, browse) is None
    assert dict(browse.response_headers)["RateLimit-Policy"] == '"all";q=100;w=60'
    assert await check(step, store, request("/login", method="POST")) is None
    denied = await check(step, store, request("/login", method="POST"))
    assert denied is not None
    assert denied.rule == "login"
    # The denied login consumed nothing of "all": 100 - 2 requests so far.
    after = request("/items")
    await check(step, store, after)
    assert dict(after.response_headers)["RateLimit"] == '"all";r=97;t=60'


async def test_all_matching_limits_go_into_one_operation() -> None:
    step = step_for(rate_limit(name="a"), rate_limit(name="b", by=["subject"]))
    ops: list[Operation] = []
    step.evaluate(request(subject="alice"), ops)
    (op,) = ops
    assert isinstance(op, LimitCheck)
    assert [spec.key for spec in op.limits] == [
        keys.limit_key(POLICY, "a", "ip=192.0.2.1"),
        keys.limit_key(POLICY, "b", "subject=alice"),
    ]


async def test_a_missing_key_dimension_skips_that_limit() -> None:
    step = step_for(rate_limit(name="per-subject", by=["subject"], limit=1))
    store = new_store()
    anonymous = request()
    ops: list[Operation] = []
    assert step.evaluate(anonymous, ops) is None
    assert ops == []
    assert report(anonymous)["verdict"] == "skip"
    assert await check(step, store, request(subject="alice")) is None
    assert await check(step, store, request(subject="alice")) is not None


async def test_per_plan_limits() -> None:
    step = step_for(rate_limit(by=["subject"], limit=1, plans={"gold": 3, "closed": 0}))
    store = new_store()
    gold = [await check(step, store, request(subject="g", plan="gold")) for _ in range(4)]
    assert [deny is None for deny in gold] == [True, True, True, False]
    free = [await check(step, store, request(subject="f", plan="free")) for _ in range(2)]
    assert [deny is None for deny in free] == [True, False]  # unknown plan: the default
    closed = request(subject="c", plan="closed")
    deny = await check(step, store, closed)
    assert deny is not None
    assert deny.reason is Reason.RATE_LIMITED
    assert "no requests on this plan" in deny.detail
    assert dict(deny.headers)["Retry-After"] == "60"


@pytest.mark.parametrize(("risk", "effective"), [(0, 10), (30, 7), (55, 4), (95, 1), (100, 1)])
async def test_risk_scaling(risk: int, effective: int) -> None:
    step = step_for(rate_limit(limit=10, risk_scaling=True))
    store = new_store()
    allowed = 0
    for _ in range(12):
        if await check(step, store, request(risk=risk)) is None:
            allowed += 1
    assert allowed == effective
    ctx = request(risk=risk)
    await check(step, store, ctx)
    assert report(ctx)["limits"][0]["limit"] == effective


async def test_risk_is_ignored_without_risk_scaling() -> None:
    step, store = step_for(rate_limit(limit=2)), new_store()
    results = [await check(step, store, request(risk=90)) for _ in range(3)]
    assert [r is None for r in results] == [True, True, False]


async def test_graphql_cost_budget() -> None:
    budget = CostBudgetSpec.model_validate({"limit": 100, "period": "1h", "by": ["subject"]})
    step = step_for(rate_limit(limit=50), budget=budget)
    store = new_store()
    plain = request(subject="alice")  # no GraphQL cost: the budget does not apply
    await check(step, store, plain)
    assert dict(plain.response_headers)["RateLimit-Policy"] == '"per-ip";q=50;w=60'
    first = request("/graphql", subject="alice", graphql_cost=60)
    assert await check(step, store, first) is None
    assert dict(first.response_headers)["RateLimit"] == (
        '"per-ip";r=48;t=60, "graphql.costBudget";r=40;t=3600'
    )
    second = request("/graphql", subject="alice", graphql_cost=60)
    deny = await check(step, store, second)
    assert deny is not None
    assert deny.reason is Reason.BUDGET_EXHAUSTED
    assert deny.rule == "graphql.costBudget"
    cheap = request("/graphql", subject="alice", graphql_cost=40)
    assert await check(step, store, cheap) is None


async def test_header_dimensions_are_not_echoed_in_explanations() -> None:
    step = step_for(rate_limit(by=["header:authorization"]))
    ctx = request(headers={"authorization": "Bearer secret-token"})
    await check(step, new_store(), ctx)
    key = report(ctx)["limits"][0]["key"]
    assert "secret-token" not in key
    assert key.startswith("header:authorization=sha256:")


async def test_api_keys_are_keyed_by_their_id() -> None:
    step = step_for(rate_limit(by=["api_key"]))
    ctx = request(api_key_id="k1")
    ops: list[Operation] = []
    step.evaluate(ctx, ops)
    assert isinstance(ops[0], LimitCheck)
    assert ops[0].limits[0].key == keys.limit_key(POLICY, "per-ip", "api_key=k1")


async def test_a_check_the_store_did_not_run_settles_to_nothing() -> None:
    step = step_for(rate_limit())
    ctx = request()
    step.evaluate(ctx, [])
    assert step.settle(ctx, [None]) is None
    assert ctx.response_headers == []


async def test_unknown_states_from_the_local_cache_are_left_out() -> None:
    step = step_for(rate_limit(name="a"), rate_limit(name="b"))
    ctx = request()
    step.evaluate(ctx, [])
    result = LimitResult(False, (LimitState(-1, 0, 0), LimitState(0, 5_000, 5_000)))
    deny = step.settle(ctx, [result])
    assert deny is not None
    assert deny.rule == "b"
    assert dict(deny.headers)["RateLimit"] == '"b";r=0;t=5'
    assert dict(deny.headers)["RateLimit-Policy"] == '"a";q=3;w=60, "b";q=3;w=60'


def test_no_limits_no_step() -> None:
    assert build_rate_limit_step(POLICY, [], None) is None


def test_limits_too_large_to_count_exactly_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0\]\.period: a sliding window of 1000000000 per 1d"):
        build_rate_limit_step(POLICY, [rate_limit(limit=10**9, period="1d")], None)
    with pytest.raises(ValueError, match=r"\[0\]\.period: a bucket of 1000000000 tokens"):
        build_rate_limit_step(
            POLICY,
            [rate_limit(limit=1, period="365d", algorithm="token_bucket", burst=10**9)],
            None,
        )
    # A fixed window counts plainly: a billion a day is fine.
    assert build_rate_limit_step(
        POLICY, [rate_limit(limit=10**9, period="1d", algorithm="fixed_window")], None
    )
