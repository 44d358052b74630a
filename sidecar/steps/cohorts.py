"""Cohort counting: the last step of a Check, and the rules the access-log stream uses.

A *request cohort* (no ``responseCodes``) counts every request that matches its
``match``, keyed by its ``by``, in the same store call as the rate limits. A
*response cohort* counts the responses whose status is in ``responseCodes``; those
arrive later, from Envoy's access-log stream (``sidecar.cohorts.als``), which
finds the rules here, on the compiled step.

Reaching ``threshold`` within ``period`` makes the key a member for ``for``; the
store reports that exactly once (``became_member``), and that is when we notify.
Members are refused or flagged by ``ActiveBlocksStep`` on every later request;
the request that made a ``flag`` member is flagged here already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.cohorts.events import (
    FirstSeen,
    MembershipEvent,
    NotificationSink,
    NotificationTarget,
    SampleRequest,
    display_key,
    sensitive_dimensions,
)
from sidecar.compiled.dimensions import CompiledKey
from sidecar.compiled.paths import RequestMatcher
from sidecar.model.durations import parse_duration
from sidecar.model.policy import CohortSpec, NotificationSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny
from sidecar.stores import keys
from sidecar.stores.base import CohortCount, CountResult, Operation, OpResult


@dataclass(frozen=True, slots=True)
class CohortRule:
    """One ``spec.cohorts`` entry, ready for the hot path."""

    policy: str
    name: str
    matcher: RequestMatcher
    key: CompiledKey
    response_codes: frozenset[int]  # empty: a request cohort
    threshold: int
    period_ms: int
    member_ttl_ms: int
    action: str
    window: str  # period as written, for notifications
    membership: str  # ``for`` as written
    targets: tuple[NotificationTarget, ...]
    sensitive: frozenset[str]  # key dimensions shown as digests
    counter_prefix: str  # store keys are prefix + key: built once, not per request
    member_prefix: str

    def count(self, key: str) -> CohortCount:
        return CohortCount(
            self.counter_prefix + key,
            self.member_prefix + key,
            self.threshold,
            self.period_ms,
            self.member_ttl_ms,
        )


@dataclass(frozen=True, slots=True)
class Counted:
    """One event a cohort counted: which rule, under which key."""

    rule: CohortRule
    key: str


class CohortStep:
    __slots__ = (
        "_clock",
        "_first_seen",
        "_notifier",
        "_policy",
        "name",
        "request_rules",
        "response_rules",
    )

    def __init__(
        self,
        policy_id: str,
        request_rules: tuple[CohortRule, ...],
        response_rules: tuple[CohortRule, ...],
        notifier: NotificationSink | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = "cohorts"
        self._policy = policy_id
        self.request_rules = request_rules
        self.response_rules = response_rules
        self._notifier = notifier
        self._clock = clock
        self._first_seen = FirstSeen()

    @property
    def cohort_names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.request_rules + self.response_rules)

    # -- Check path ----------------------------------------------------------------

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        if not self.request_rules:
            return None
        now = 0.0
        for rule in self.request_rules:
            if not rule.matcher.matches(ctx.method, ctx.path):
                continue
            key = rule.key.value(ctx)
            if key is None:
                continue
            ops.append(rule.count(key))
            now = now or self._clock.now()
            self._first_seen.note(rule.name, key, now, rule.period_ms // 1000)
        return None

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        joined = any(isinstance(r, CountResult) and r.became_member for r in results)
        if not joined and not ctx.explain:
            return None
        counted = self._counted(ctx)
        details: list[dict[str, object]] = []
        for item, result in zip(counted, results, strict=False):
            if not isinstance(result, CountResult):
                continue
            if result.became_member:
                if item.rule.action == "flag" and item.rule.name not in ctx.flags:
                    ctx.flags.append(item.rule.name)
                self._joined(item, result, ctx, None)
            if ctx.explain:
                details.append(
                    {
                        "cohort": item.rule.name,
                        "key": display_key(item.key, item.rule.sensitive),
                        "count": result.count,
                        "threshold": item.rule.threshold,
                        "member": result.member,
                        "joined": result.became_member,
                    }
                )
        ctx.report("cohorts", "allow", counted=details)
        return None

    def _counted(self, ctx: RequestContext) -> list[Counted]:
        """The rules ``evaluate`` counted for this request, in the same order."""
        out: list[Counted] = []
        for rule in self.request_rules:
            if rule.matcher.matches(ctx.method, ctx.path):
                key = rule.key.value(ctx)
                if key is not None:
                    out.append(Counted(rule, key))
        return out

    # -- access-log path -------------------------------------------------------------

    def count_response(self, ctx: RequestContext, status: int, seen_at: float) -> list[Counted]:
        """The response cohorts this finished request counts towards."""
        out: list[Counted] = []
        for rule in self.response_rules:
            if status not in rule.response_codes or not rule.matcher.matches(ctx.method, ctx.path):
                continue
            key = rule.key.value(ctx)
            if key is None:
                continue
            out.append(Counted(rule, key))
            self._first_seen.note(rule.name, key, seen_at, rule.period_ms // 1000)
        return out

    def settle_response(
        self, ctx: RequestContext, status: int, item: Counted, result: CountResult
    ) -> None:
        if result.became_member:
            self._joined(item, result, ctx, status)

    # -- membership ------------------------------------------------------------------

    def _joined(
        self, item: Counted, result: CountResult, ctx: RequestContext, status: int | None
    ) -> None:
        if self._notifier is None:
            return
        rule = item.rule
        now = self._clock.now()
        window_s = rule.period_ms // 1000
        event = MembershipEvent.new(
            policy=self._policy,
            cohort=rule.name,
            key=display_key(item.key, rule.sensitive),
            action=rule.action,
            source="responses" if rule.response_codes else "requests",
            count=result.count,
            threshold=rule.threshold,
            window=rule.window,
            window_seconds=window_s,
            membership=rule.membership,
            membership_seconds=rule.member_ttl_ms // 1000,
            first_seen=self._first_seen.pop(rule.name, item.key, now, window_s),
            last_seen=now,
            sample=SampleRequest(
                method=ctx.method,
                path=ctx.path,
                host=ctx.host,
                client_ip=ctx.client_ip,
                subject=ctx.subject,
                user_agent=ctx.headers.get("user-agent"),
                status=status,
            ),
        )
        if rule.targets:
            self._notifier.submit(event, rule.targets)


def _prefix(build: Callable[[str, str, str], str], policy_id: str, cohort: str) -> str:
    prefix = build(policy_id, cohort, "")
    if build(policy_id, cohort, "k") != prefix + "k":  # the key schema must end with the key
        raise ValueError(f"store key schema of {build.__name__} does not end with the key")
    return prefix


def compile_rule(
    policy_id: str, spec: CohortSpec, targets: dict[str, NotificationTarget]
) -> CohortRule:
    key = CompiledKey.compile([spec.by])
    return CohortRule(
        policy=policy_id,
        name=spec.name,
        matcher=RequestMatcher.compile(spec.match.methods, spec.match.paths),
        key=key,
        response_codes=frozenset(spec.response_codes),
        threshold=spec.threshold,
        period_ms=parse_duration(spec.period) * 1000,
        member_ttl_ms=parse_duration(spec.for_) * 1000,
        action=spec.action,
        window=spec.period,
        membership=spec.for_,
        targets=tuple(targets[name] for name in spec.notify),
        sensitive=sensitive_dimensions(key.dimensions),
        counter_prefix=_prefix(keys.cohort_counter_key, policy_id, spec.name),
        member_prefix=_prefix(keys.member_key, policy_id, spec.name),
    )


def build_cohort_step(
    policy_id: str,
    cohorts: Sequence[CohortSpec],
    notifications: Sequence[NotificationSpec],
    notifier: NotificationSink | None,
    clock: Clock = SYSTEM_CLOCK,
) -> CohortStep | None:
    if not cohorts:
        return None
    targets = {spec.name: NotificationTarget.from_spec(spec) for spec in notifications}
    missing = sorted({name for c in cohorts for name in c.notify if name not in targets})
    if missing:
        raise ValueError(f"notify names undefined notifications: {', '.join(missing)}")
    rules = [compile_rule(policy_id, spec, targets) for spec in cohorts]
    return CohortStep(
        policy_id,
        tuple(r for r in rules if not r.response_codes),
        tuple(r for r in rules if r.response_codes),
        notifier,
        clock,
    )
