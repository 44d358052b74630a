"""The decision engine: one policy, one request, one Decision.

Reads top to bottom in the contract's order (section 4):
active blocks → honeypot → IP reputation → identity → GraphQL →
rate limits and cost budget → cohort counting.

1. Local phase: every step looks at the request and appends the store operations
   it needs; a local deny stops the rest (shadow mode records it and goes on).
2. Store phase: all operations run in ONE store call (one Redis round trip).
   A failing store follows the policy's ``failureMode``: ``closed`` answers 503,
   ``open`` re-runs the plan on the process-local store so an outage does not
   turn every limit off.
3. Settle: each step reads its own results, in order; the first deny in contract
   order wins, whichever phase produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from sidecar.compiled.policy import CompiledPolicy
from sidecar.errors import StoreUnavailable
from sidecar.iprep.client_ip import client_ip
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.step import Step
from sidecar.pipeline.verdict import Decision, Deny, Reason
from sidecar.stores.base import Operation, OpResult, Store, StorePlan

log = logging.getLogger("sidecar.engine")

_STORE_DOWN = Deny(
    Reason.STORE_UNAVAILABLE, "failureMode", "Abuse protection is temporarily unavailable."
)
_NO_RESULTS: tuple[OpResult | None, ...] = ()


class PipelineTrace(Protocol):
    """Spans of one sampled Check (``observability/tracing.py``). The engine gets None
    when tracing is off or the Check is not sampled, and then runs exactly as untraced:
    one ``is None`` test per step is all the untraced path pays."""

    def evaluate(self, step: Step, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        """``step.evaluate``, timed: the step's span."""
        ...

    def settled(self, index: int, deny: Deny) -> None:
        """The step evaluated ``index``-th denied when it settled the store results."""
        ...

    async def execute(
        self, store: Store, plan: StorePlan, *, fallback: bool
    ) -> tuple[OpResult | None, ...]:
        """``store.execute``, timed: the store span."""
        ...


class Engine:
    def __init__(self, store: Store, fallback: Store) -> None:
        self.store = store
        self.fallback = fallback  # process-local: used under failureMode open

    async def decide(
        self, ctx: RequestContext, policy: CompiledPolicy, trace: PipelineTrace | None = None
    ) -> Decision:
        ctx.client_ip = client_ip(
            ctx.source_ip, ctx.headers.get("x-forwarded-for"), policy.xff_trusted_hops
        )
        shadow = policy.shadow
        steps = policy.steps
        active_blocks = policy.active_blocks

        # 1. Local phase.
        ops: list[Operation] = []
        spans: list[tuple[int, int]] = []
        local: dict[int, Deny] = {}
        for index, step in enumerate(steps):
            start = len(ops)
            deny = step.evaluate(ctx, ops) if trace is None else trace.evaluate(step, ctx, ops)
            spans.append((start, len(ops)))
            if deny is not None:
                local[index] = deny
                if not shadow:
                    break
        # Active blocks are settled first but built last: their keys need the subject.
        active_ops: list[Operation] = []
        if active_blocks is not None:
            if trace is None:
                active_blocks.evaluate(ctx, active_ops)
            else:
                trace.evaluate(active_blocks, ctx, active_ops)
        offset = len(active_ops)

        # 2. Store phase: one call for everything.
        results = _NO_RESULTS
        store_deny: Deny | None = None
        if active_ops or ops:
            plan = StorePlan(tuple(active_ops + ops), shadow)
            try:
                if trace is None:
                    results = await self.store.execute(plan)
                else:
                    results = await trace.execute(self.store, plan, fallback=False)
            except StoreUnavailable as exc:
                if policy.failure_closed:
                    log.warning(
                        "store unavailable, failing closed for %s: %s", policy.id, exc.detail
                    )
                    store_deny = _STORE_DOWN
                elif trace is None:
                    results = await self.fallback.execute(plan)
                else:
                    results = await trace.execute(self.fallback, plan, fallback=True)
            if store_deny is not None:
                ctx.report("store", "error", failureMode="closed")
                return self._finish(ctx, policy, store_deny)

        # 3. Settle in contract order.
        first: Deny | None = None
        if active_blocks is not None:
            first = active_blocks.settle(ctx, results[:offset])
            if first is not None and trace is not None:
                trace.settled(len(spans), first)  # evaluated after the steps
            if first is not None and not shadow:
                return self._finish(ctx, policy, first)
        for index, (start, end) in enumerate(spans):
            deny = None
            if end > start:
                deny = steps[index].settle(ctx, _slice(results, offset + start, offset + end))
                if deny is not None and trace is not None:
                    trace.settled(index, deny)
            if deny is None:
                deny = local.get(index)
            if deny is not None and first is None:
                first = deny
                if not shadow:
                    break
        return self._finish(ctx, policy, first)

    def _finish(self, ctx: RequestContext, policy: CompiledPolicy, deny: Deny | None) -> Decision:
        decision = Decision(
            allowed=deny is None or policy.shadow,
            policy=policy.id,
            subject=ctx.subject,
            plan=ctx.plan,
            api_key_id=ctx.api_key_id,
            risk=ctx.risk,
            flags=tuple(ctx.flags),
            response_headers=tuple(ctx.response_headers),
        )
        if deny is not None:
            if policy.shadow:
                decision.shadow = deny
            else:
                decision.deny = deny
        return decision


def _slice(results: Sequence[OpResult | None], start: int, end: int) -> Sequence[OpResult | None]:
    if not results:
        return (None,) * (end - start)
    return results[start:end]
