"""The Check handler: CheckRequest → RequestContext → engine → CheckResponse (wire bytes).

It never raises. An undecodable request gets a 400; an unexpected error inside
the pipeline follows the bound policy's failureMode (closed: 503, open: allow),
is logged with its trace, and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.message import DecodeError

from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.observability import metrics
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.engine import Engine
from sidecar.pipeline.verdict import Decision, Deny, Reason
from sidecar.server import responses
from sidecar.server.requests import context_from_check

if TYPE_CHECKING:
    from sidecar.observability.decision_log import DecisionLog
    from sidecar.observability.tracing import CheckTrace, Tracing

log = logging.getLogger("sidecar.authz")

DecisionHook = Callable[[RequestContext, Decision], None]
_INTERNAL = Deny(
    Reason.STORE_UNAVAILABLE, "internal", "Abuse protection is temporarily unavailable."
)


def lenient_check_request(data: bytes) -> CheckRequest | None:
    """gRPC deserializer that turns undecodable bytes into None instead of an RPC error."""
    try:
        return CheckRequest.FromString(data)
    except DecodeError:
        return None


class Authorizer:
    """Shared by the gRPC Check handler, Explain and the offline ``check`` command."""

    def __init__(
        self,
        registry: PolicyRegistry,
        engine: Engine,
        on_decision: DecisionHook | None = None,
        *,
        tracing: Tracing | None = None,
        decision_log: DecisionLog | None = None,
        decision_metadata: str = "auto",
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.on_decision = on_decision
        # None unless --otlp-endpoint: then a Check creates no span objects at all.
        self.tracing = tracing
        self.decision_log = decision_log
        # "always": every allow carries the decision as Envoy dynamic metadata;
        # "auto": only where the access-log stream needs it (responses.render).
        self._always_metadata = decision_metadata == "always"
        self._counters: dict[tuple[str, str, str], Any] = {}

    def bind(self, ctx: RequestContext) -> CompiledPolicy | None:
        return self.registry.current.index.bind(ctx.host, ctx.context_extensions)

    async def decide(
        self, ctx: RequestContext, policy: CompiledPolicy, trace: CheckTrace | None = None
    ) -> Decision:
        try:
            decision = await self.engine.decide(ctx, policy, trace)
        except Exception as exc:
            log.exception("internal error while evaluating policy %s", policy.id)
            if trace is not None:
                trace.fail(exc)
            decision = Decision(allowed=not policy.failure_closed, policy=policy.id)
            if policy.failure_closed:
                decision.deny = _INTERNAL
            else:
                decision.shadow = _INTERNAL
        self._count(decision)
        if self.on_decision is not None:
            self.on_decision(ctx, decision)
        return decision

    def _count(self, decision: Decision) -> None:
        key = (decision.policy, "allow" if decision.deny is None else "deny", decision.reason)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.DECISIONS.labels(*key)
        counter.inc()

    async def check(
        self, request: CheckRequest | None, context: grpc.aio.ServicerContext | None = None
    ) -> bytes:
        """The gRPC ``Check`` handler (registered as is: no wrapper coroutine per call)."""
        started = time.perf_counter()
        policy: CompiledPolicy | None = None
        trace: CheckTrace | None = None
        decision: Decision | None = None
        ctx: RequestContext | None = None
        try:
            if request is None:
                return responses.malformed_request()
            ctx = context_from_check(request)
            if self.tracing is not None:
                trace = self.tracing.start_check(ctx)
            policy = self.bind(ctx)
            if policy is None:
                decision = Decision(allowed=True, policy="none")
                self._count(decision)
                if self.decision_log is not None:
                    self.decision_log.record(ctx, decision, trace)
                return responses.allow_without_policy(ctx.headers)
            decision = await self.decide(ctx, policy, trace)
            if self.decision_log is not None:
                self.decision_log.record(ctx, decision, trace)
            return responses.render(
                decision,
                ctx.client_ip,
                ctx.headers,
                metadata=self._always_metadata or policy.counts_responses,
            )
        except Exception as exc:
            log.exception("internal error while answering a Check")
            if trace is not None:
                trace.fail(exc)
            if policy is not None and policy.failure_closed:
                return responses.render(
                    Decision(allowed=False, policy=policy.id, deny=_INTERNAL), "", {}
                )
            return responses.allow_without_policy(None if ctx is None else ctx.headers)
        finally:
            if trace is not None:
                trace.finish(decision)
            metrics.CHECK_DURATION.observe(time.perf_counter() - started)
