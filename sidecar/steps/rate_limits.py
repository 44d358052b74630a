"""``spec.rateLimits`` and ``spec.graphql.costBudget``: one LimitCheck per request.

Every rate limit whose ``match`` fits the request, and the GraphQL cost budget
when the request has a cost, go into ONE ``LimitCheck`` operation: the store
checks them together and consumes them only if every one has room, so a request
refused by one limit does not use up the others.

The effective limit of a rule is its ``plans`` entry for the caller's plan (else
``limit``), then, with ``riskScaling``, ``max(1, floor(limit * (100 - risk) / 100))``.
A plan whose limit is 0 may not use the route at all: denied without a store call.

Responses: a denial is 429 ``rate_limited`` (``budget_exhausted`` for the budget)
with ``Retry-After`` and the RateLimit headers; an allowed request gets the
RateLimit headers through ``ctx.response_headers``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.compiled.dimensions import CompiledKey
from sidecar.compiled.paths import RequestMatcher
from sidecar.errors import SectionError
from sidecar.model.durations import parse_duration
from sidecar.model.policy import CostBudgetSpec, RateLimitSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.ratelimit import headers
from sidecar.ratelimit.algorithms import emission_interval_us
from sidecar.stores import keys
from sidecar.stores.base import (
    Algorithm,
    LimitCheck,
    LimitResult,
    LimitSpec,
    LimitState,
    Operation,
    OpResult,
)

BUDGET_RULE = "graphql.costBudget"
STEP = "rate_limits"
# The stores count in integers that must stay exact in Redis' Lua (doubles):
# limit times period in milliseconds stays below this.
MAX_LIMIT_PERIOD_PRODUCT = 2**50


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """One rate limit (or the cost budget) as the hot path needs it."""

    rule: str
    matcher: RequestMatcher | None  # None: every request (the budget: every costed one)
    key: CompiledKey
    algorithm: Algorithm
    limit: int
    period_ms: int
    burst: int
    plans: Mapping[str, int]
    risk_scaling: bool
    is_budget: bool
    key_prefix: str  # limit_key(policy, rule, "")
    window_s: int
    base_policy_item: str  # RateLimit-Policy item for the unscaled limit

    def effective_limit(self, ctx: RequestContext) -> int:
        limit = self.limit
        if self.plans and ctx.plan is not None:
            limit = self.plans.get(ctx.plan, limit)
        if self.risk_scaling and ctx.risk and limit > 0:
            limit = max(1, limit * (100 - ctx.risk) // 100)
        return limit

    def policy_item(self, limit: int) -> str:
        if limit == self.limit:
            return self.base_policy_item
        return headers.policy_item(self.rule, limit, self.window_s)


class RateLimitStep:
    __slots__ = ("_limits", "_policy", "name")

    def __init__(self, policy_id: str, limits: tuple[CompiledLimit, ...]) -> None:
        self.name = STEP
        self._policy = policy_id
        self._limits = limits

    def _matches(self, ctx: RequestContext) -> list[tuple[CompiledLimit, str, int]]:
        """(rule, key value, effective limit) of every limit this request counts against."""
        found: list[tuple[CompiledLimit, str, int]] = []
        for rule in self._limits:
            if rule.is_budget:
                if ctx.graphql_cost <= 0:
                    continue
            elif rule.matcher is not None and not rule.matcher.matches(ctx.method, ctx.path):
                continue
            who = rule.key.value(ctx)
            if who is None:
                continue  # a dimension this request lacks (e.g. anonymous under by: [subject])
            found.append((rule, who, rule.effective_limit(ctx)))
        return found

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        found = self._matches(ctx)
        if ctx.carry is None:
            ctx.carry = {}
        ctx.carry[STEP] = found  # settle reads it back instead of matching again
        if not found:
            ctx.report(STEP, "skip", limits=[])
            return None
        specs: list[LimitSpec] = []
        for rule, who, limit in found:
            if limit <= 0:
                return self._closed_to_plan(ctx, rule, found)
            specs.append(
                LimitSpec(
                    rule.key_prefix + who,
                    rule.algorithm,
                    limit,
                    rule.period_ms,
                    rule.burst,
                    ctx.graphql_cost if rule.is_budget else 1,
                )
            )
        ops.append(LimitCheck(tuple(specs)))
        return None

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        result = results[0] if results else None
        if not isinstance(result, LimitResult):
            return None  # not run: an earlier operation (a block, a revocation) denied
        found = ctx.carry.get(STEP) if ctx.carry is not None else None
        if found is None:
            found = self._matches(ctx)
        policy_items = [rule.policy_item(limit) for rule, _, limit in found]
        limit_items: list[str] = []
        denying: tuple[CompiledLimit, LimitState] | None = None
        retry_ms = 0
        for (rule, _, _), state in zip(found, result.states, strict=True):
            if state.remaining < 0:
                continue  # not looked at (denied from the local over-limit cache)
            if not result.allowed and state.retry_after_ms > 0:
                if denying is None:
                    denying = (rule, state)
                retry_ms = max(retry_ms, state.retry_after_ms)
                limit_items.append(
                    headers.limit_item(
                        rule.rule, state.remaining, headers.seconds(state.retry_after_ms)
                    )
                )
            else:
                limit_items.append(
                    headers.limit_item(rule.rule, state.remaining, headers.seconds(state.reset_ms))
                )
        fields = headers.rate_limit_headers(policy_items, limit_items)
        if ctx.explain:
            ctx.report(
                STEP,
                "allow" if result.allowed else "deny",
                limits=[
                    _explain(rule, who, limit, state)
                    for (rule, who, limit), state in zip(found, result.states, strict=True)
                ],
            )
        if result.allowed or denying is None:
            ctx.response_headers.extend(fields)
            return None
        rule, _ = denying
        wait_s = max(1, headers.seconds(retry_ms))
        if rule.is_budget:
            return Deny(
                Reason.BUDGET_EXHAUSTED,
                rule.rule,
                f"GraphQL query cost budget exhausted; retry in {wait_s} s.",
                headers=(headers.retry_after(retry_ms), *fields),
            )
        return Deny(
            Reason.RATE_LIMITED,
            rule.rule,
            f"Rate limit {rule.rule!r} exceeded; retry in {wait_s} s.",
            headers=(headers.retry_after(retry_ms), *fields),
        )

    def _closed_to_plan(
        self, ctx: RequestContext, rule: CompiledLimit, found: list[tuple[CompiledLimit, str, int]]
    ) -> Deny:
        """A plan whose limit for this rule is 0: the route is not part of the plan."""
        policy_items = [r.policy_item(limit) for r, _, limit in found]
        fields = headers.rate_limit_headers(
            policy_items, [headers.limit_item(rule.rule, 0, rule.window_s)]
        )
        ctx.report(STEP, "deny", limits=[_explain(rule, None, 0, None)], plan=ctx.plan)
        reason = Reason.BUDGET_EXHAUSTED if rule.is_budget else Reason.RATE_LIMITED
        return Deny(
            reason,
            rule.rule,
            f"Rate limit {rule.rule!r} allows no requests on this plan.",
            headers=(headers.retry_after(rule.period_ms), *fields),
        )


def _explain(
    rule: CompiledLimit, who: str | None, limit: int, state: LimitState | None
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "name": rule.rule,
        "by": list(rule.key.dimensions),
        "key": _redacted(rule.key.dimensions, who) if who is not None else None,
        "algorithm": rule.algorithm,
        "limit": limit,
        "periodSeconds": rule.window_s,
    }
    if state is not None:
        report["remaining"] = state.remaining if state.remaining >= 0 else None
        report["reset"] = headers.seconds(state.reset_ms)
        if state.retry_after_ms:
            report["retryAfter"] = headers.seconds(state.retry_after_ms)
    return report


def _redacted(dimensions: Sequence[str], who: str) -> str:
    """The key as the operator may see it: header values (possibly credentials) are
    shown as a short digest. API keys never appear: ``api_key`` keys by the key's id."""
    if not any(d.startswith("header:") for d in dimensions):
        return who
    parts = []
    for part in who.split("|"):
        name, _, value = part.partition("=")
        if name.startswith("header:"):
            value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]
        parts.append(f"{name}={value}")
    return "|".join(parts)


def _check_exact(
    field: str, algorithm: Algorithm, period: str, *, limits: list[int], burst: int
) -> None:
    """Refuse what the stores cannot count exactly (fixed windows count plainly)."""
    period_ms = parse_duration(period) * 1000
    if algorithm == "sliding_window":
        largest = max(limits)
        if largest * period_ms > MAX_LIMIT_PERIOD_PRODUCT:
            raise SectionError(
                field,
                f"a sliding window of {largest} per {period} is too large to count "
                f"exactly (limit times period must stay under {MAX_LIMIT_PERIOD_PRODUCT} "
                "request-milliseconds); use fixed_window for quotas this large",
            )
    elif algorithm == "token_bucket":
        smallest = min([value for value in limits if value > 0], default=1)
        capacity = max([burst, *limits]) * emission_interval_us(smallest, period_ms)
        if capacity > MAX_LIMIT_PERIOD_PRODUCT:
            raise SectionError(
                field,
                f"a bucket of {max([burst, *limits])} tokens refilled over {period} "
                "is too large to count exactly",
            )


def _compile(
    policy_id: str,
    rule: str,
    field: str,
    *,
    matcher: RequestMatcher | None,
    by: Sequence[str],
    algorithm: Algorithm,
    limit: int,
    period: str,
    burst: int,
    plans: Mapping[str, int],
    risk_scaling: bool,
    is_budget: bool,
) -> CompiledLimit:
    period_ms = parse_duration(period) * 1000
    _check_exact(field, algorithm, period, limits=[limit, *plans.values()], burst=burst)
    return CompiledLimit(
        rule=rule,
        matcher=matcher,
        key=CompiledKey.compile(by),
        algorithm=algorithm,
        limit=limit,
        period_ms=period_ms,
        burst=burst,
        plans=dict(plans),
        risk_scaling=risk_scaling,
        is_budget=is_budget,
        key_prefix=keys.limit_key(policy_id, rule, ""),
        window_s=period_ms // 1000,
        base_policy_item=headers.policy_item(rule, limit, period_ms // 1000),
    )


def build_rate_limit_step(
    policy_id: str, rate_limits: Sequence[RateLimitSpec], cost_budget: CostBudgetSpec | None
) -> RateLimitStep | None:
    """The step for a policy's rate limits and GraphQL cost budget; None when it has neither.

    Raises ValueError naming the field (``[2].period: ...``) for a limit the
    stores cannot count exactly."""
    compiled: list[CompiledLimit] = []
    for index, spec in enumerate(rate_limits):
        match = spec.match
        matcher = None
        if match.methods or match.paths:
            matcher = RequestMatcher.compile(match.methods, match.paths)
        compiled.append(
            _compile(
                policy_id,
                spec.name,
                f"spec.rateLimits[{index}].period",
                matcher=matcher,
                by=spec.by,
                algorithm=spec.algorithm,
                limit=spec.limit,
                period=spec.period,
                burst=spec.burst or 0,
                plans=spec.plans,
                risk_scaling=spec.risk_scaling,
                is_budget=False,
            )
        )
    if cost_budget is not None:
        compiled.append(
            _compile(
                policy_id,
                BUDGET_RULE,
                "spec.graphql.costBudget.period",
                matcher=None,
                by=cost_budget.by,
                algorithm="sliding_window",
                limit=cost_budget.limit,
                period=cost_budget.period,
                burst=0,
                plans={},
                risk_scaling=False,
                is_budget=True,
            )
        )
    if not compiled:
        return None
    return RateLimitStep(policy_id, tuple(compiled))
