"""Traces of Checks (CONTRACT.md section 5).

One span ``abuse_sidecar.check`` per Check, continuing the W3C ``traceparent``
(and ``tracestate``) the request carried, with one child span per pipeline step
and one per store round trip. Attributes say which policy decided what and why,
never what the client presented: no header values, no credentials, no body.

Decided once at startup, the structlog way: without ``--otlp-endpoint`` there is
no ``Tracing`` object at all, the Authorizer and the engine see ``None`` and a
Check creates nothing. With it, sampling is the SDK's
``ParentBased(TraceIdRatioBased(ratio))``: a sampled parent is always followed,
an unsampled one never, a Check without a parent is sampled at
``ABUSE_SIDECAR_TRACE_SAMPLING`` (default 1.0). An unsampled Check also creates
no spans: the engine runs its untraced path.

A sampled Check records its spans as plain timestamps in a ``CheckTrace`` and
encodes them once at the end (``observability/otlp.py`` says why not SDK spans).
Step spans are timed by the step's local phase; a deny found when the step
settles the store results is set on the same span (``abuse_sidecar.phase``:
``store``). The store span times the one store call.
"""

from __future__ import annotations

import random
import re
import time
from functools import lru_cache
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from sidecar import __version__
from sidecar.errors import ConfigurationError
from sidecar.observability import otlp
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.step import Step
from sidecar.pipeline.verdict import Decision, Deny
from sidecar.stores.base import Operation, OpResult, Store, StorePlan

CHECK_SPAN = "abuse_sidecar.check"
STORE_SPAN = "abuse_sidecar.store"
STEP_SPAN_PREFIX = "abuse_sidecar.step."
SERVICE_NAME = "abuse-sidecar"

_TRACE_ID_LOW_64 = (1 << 64) - 1
_perf_ns = time.perf_counter_ns
_attr = otlp.cached_attribute
_CHECK_NAME = otlp.name_and_kind(CHECK_SPAN, otlp.KIND_SERVER)
_STORE_NAME = otlp.name_and_kind(STORE_SPAN, otlp.KIND_CLIENT)


def _new_id(bits: int) -> int:
    # All zeros is the one invalid id; its 2**-64 chance is not worth a loop.
    return random.getrandbits(bits) or 1


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C ``traceparent``, or None when it
    is not a valid one (W3C Trace Context, section 3.2: lower-case hex, version
    ``ff`` and all-zero ids invalid, version 00 exactly 55 characters, later
    versions may append ``-`` fields)."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 0x01)


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


class Tracing:
    """Tracing switched on: samples Checks, hands their encoded spans to the exporter.

    Sampling is the SDK's ``ParentBased(TraceIdRatioBased(ratio))``, applied with
    the ratio sampler's own bound: a valid ``traceparent`` decides by its sampled
    flag, a Check without one by the low 64 bits of its new trace id."""

    def __init__(self, exporter: otlp.OtlpExporter, sampling: float) -> None:
        self.exporter = exporter
        self.sampling = sampling
        self._root_bound = TraceIdRatioBased(sampling).bound

    def start_check(self, ctx: RequestContext) -> CheckTrace | None:
        """The trace of this Check, or None when it is not sampled."""
        raw = ctx.headers.get("traceparent")
        parent = parse_traceparent(raw) if raw else None
        if parent is None:
            trace_id = _new_id(128)
            if trace_id & _TRACE_ID_LOW_64 >= self._root_bound:
                return None
            return CheckTrace(self.exporter, ctx, trace_id, 0, "")
        trace_id, parent_id, sampled = parent
        if not sampled:
            return None
        state = ctx.headers.get("tracestate")
        return CheckTrace(
            self.exporter, ctx, trace_id, parent_id, valid_trace_state(state) if state else ""
        )

    async def start(self) -> None:
        await self.exporter.start()

    async def aclose(self) -> None:
        await self.exporter.aclose()


def build_tracing(endpoint: str, sampling: float) -> Tracing:
    """Tracing to an OTLP/gRPC ``endpoint``; ``start()`` opens the channel."""
    if not 0.0 <= sampling <= 1.0:
        raise ConfigurationError(
            f"ABUSE_SIDECAR_TRACE_SAMPLING must be between 0 and 1, not {sampling}"
        )
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, as operators expect.
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    attributes = {
        k: v for k, v in resource.attributes.items() if isinstance(v, str | bool | int | float)
    }
    envelope = otlp.Envelope.build(attributes, "sidecar", __version__)
    return Tracing(otlp.OtlpExporter(endpoint, envelope), sampling)


async def start_tracing(endpoint: str, sampling: float) -> Tracing:
    """Tracing to ``endpoint`` (``--otlp-endpoint``), its exporter running. Without an
    endpoint there is nothing to start: the Authorizer gets None."""
    tracing = build_tracing(endpoint, sampling)
    await tracing.start()
    return tracing


class CheckTrace:
    """The spans of one sampled Check, kept as timestamps until ``finish``.

    Implements ``sidecar.pipeline.engine.PipelineTrace``: the engine hands each step
    and the store call through it, and it records a plain list per span (no object
    per step), encoded once in ``finish``."""

    __slots__ = (
        "_child_context",
        "_context",
        "_ctx",
        "_error",
        "_exporter",
        "_offset",
        "_start",
        "_steps",
        "_stores",
        "span_id",
        "trace_id",
    )

    def __init__(
        self,
        exporter: otlp.OtlpExporter,
        ctx: RequestContext,
        trace_id: int,
        parent_id: int,
        trace_state: str,
    ) -> None:
        self._exporter = exporter
        self._ctx = ctx
        self.trace_id = trace_id.to_bytes(16, "big")
        self.span_id = _new_id(64).to_bytes(8, "big")
        remote_parent = parent_id.to_bytes(8, "big") if parent_id else b""
        self._context = otlp.span_context(self.trace_id, remote_parent, trace_state)
        self._child_context = otlp.span_context(self.trace_id, self.span_id, trace_state)
        self._start = _perf_ns()
        # Spans are timed with perf_counter_ns (monotonic, cheap); this maps to Unix time.
        self._offset = time.time_ns() - self._start
        # One [name, start, end, operations, deny, phase] per step, in evaluation order.
        self._steps: list[list[Any]] = []
        self._stores: list[otlp.ChildSpan] = []  # store calls, as they end
        self._error = ""

    @property
    def trace_id_hex(self) -> str:
        return self.trace_id.hex()

    @property
    def span_id_hex(self) -> str:
        return self.span_id.hex()

    # -- PipelineTrace ------------------------------------------------------------

    def evaluate(self, step: Step, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        """A step's span is timed by its local phase."""
        before = len(ops)
        start = _perf_ns()
        deny = step.evaluate(ctx, ops)
        self._steps.append([step.name, start, _perf_ns(), len(ops) - before, deny, "local"])
        return deny

    def settled(self, index: int, deny: Deny) -> None:
        """A deny found when the step settled the store results goes on the same span."""
        record = self._steps[index]
        if record[4] is None:
            record[4] = deny
            record[5] = "store"

    async def execute(
        self, store: Store, plan: StorePlan, *, fallback: bool
    ) -> tuple[OpResult | None, ...]:
        start = _perf_ns()
        try:
            results = await store.execute(plan)
        except BaseException as exc:
            self._store_span(store.name, fallback, len(plan.operations), start, type(exc).__name__)
            raise
        self._store_span(store.name, fallback, len(plan.operations), start, "")
        return results

    def _store_span(
        self, store: str, fallback: bool, operations: int, start: int, error: str
    ) -> None:
        status = b""
        attributes = _store_attributes(store, operations, fallback)
        if error:
            attributes += _attr("error.type", error)
            status = otlp.status_error(error)
        self._stores.append((_STORE_NAME, start, _perf_ns(), attributes, status))

    # -- the check span -----------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """The Check hit an internal error (status ERROR, the error's class only)."""
        self._error = type(error).__name__

    def finish(self, decision: Decision | None) -> None:
        """End the check span and hand every span of this Check to the exporter."""
        end = _perf_ns()
        children = self._stores
        for name, start, step_end, operations, deny, phase in self._steps:
            name_kind, allowed, _ = _step_parts(name)
            if deny is None:
                attributes = allowed
            else:
                attributes = _step_denied(name, deny.reason.value, deny.rule, phase)
            if operations:
                attributes += _attr("abuse_sidecar.store.operations", operations)
            children.append((name_kind, start, step_end, attributes, b""))
        spans = otlp.encode_children(self._child_context, children, self._offset)
        ctx = self._ctx
        attributes = _decision_attributes(ctx.method, decision)
        if ctx.client_ip:
            attributes += otlp.string_attribute("client.address", ctx.client_ip)
        if decision is not None and decision.subject:
            attributes += otlp.string_attribute("abuse_sidecar.subject", decision.subject)
        status = b""
        if self._error:
            attributes += _attr("error.type", self._error)
            status = otlp.status_error(self._error)
        spans.append(
            otlp.encode_span(
                self._context,
                self.span_id,
                _CHECK_NAME,
                self._start + self._offset,
                end + self._offset,
                attributes,
                status,
            )
        )
        self._exporter.add(b"".join(spans), len(spans))


_DecisionKey = tuple[str, str, str, str, str, str, str, int]


def _decision_attributes(method: str, decision: Decision | None) -> bytes:
    """The check span's attributes that come from a small set of values, encoded once
    per combination: methods, policies, reasons, rules and risks repeat."""
    if decision is None:
        return _attr("http.request.method", method)
    deny, shadow = decision.deny, decision.shadow
    return _encode_decision(
        (
            method,
            decision.policy,
            "allow" if deny is None else "deny",
            deny.reason.value if deny is not None else "",
            deny.rule if deny is not None else "",
            shadow.reason.value if shadow is not None else "",
            shadow.rule if shadow is not None else "",
            decision.risk,
        )
    )


@lru_cache(maxsize=4096)
def _encode_decision(key: _DecisionKey) -> bytes:
    method, policy, verdict, reason, rule, shadow_reason, shadow_rule, risk = key
    attributes = [
        _attr("http.request.method", method),
        _attr("abuse_sidecar.policy", policy),
        _attr("abuse_sidecar.decision", verdict),
    ]
    if verdict == "deny":
        attributes.append(_attr("abuse_sidecar.reason", reason))
        attributes.append(_attr("abuse_sidecar.rule", rule))
    if shadow_reason:
        attributes.append(_attr("abuse_sidecar.shadow_reason", shadow_reason))
        attributes.append(_attr("abuse_sidecar.shadow_rule", shadow_rule))
    attributes.append(_attr("abuse_sidecar.risk", risk))
    return b"".join(attributes)


@lru_cache(maxsize=64)
def _store_attributes(store: str, operations: int, fallback: bool) -> bytes:
    attributes = _attr("abuse_sidecar.store", store) + _attr(
        "abuse_sidecar.store.operations", operations
    )
    if fallback:
        attributes += _attr("abuse_sidecar.store.fallback", True)
    return attributes


@lru_cache(maxsize=256)
def _step_parts(name: str) -> tuple[bytes, bytes, bytes]:
    """A step's span name and kind, and its attributes when it allowed / denied."""
    step = _attr("abuse_sidecar.step", name)
    return (
        otlp.name_and_kind(STEP_SPAN_PREFIX + name, otlp.KIND_INTERNAL),
        step + _attr("abuse_sidecar.verdict", "allow"),
        step + _attr("abuse_sidecar.verdict", "deny"),
    )


@lru_cache(maxsize=1024)
def _step_denied(name: str, reason: str, rule: str, phase: str) -> bytes:
    return (
        _step_parts(name)[2]
        + _attr("abuse_sidecar.reason", reason)
        + _attr("abuse_sidecar.rule", rule)
        + _attr("abuse_sidecar.phase", phase)
    )


@lru_cache(maxsize=1024)
def valid_trace_state(header: str) -> str:
    """``tracestate`` as we pass it on: its members when all are valid (W3C Trace
    Context, section 3.3), else nothing. Not the OTel API's parser: it logs a
    warning with the client's text for every invalid header. Cached: a deployment
    sees the same few values again and again."""
    members = [m for m in (part.strip(" \t") for part in header.split(",")) if m]
    if len(members) > _MAX_TRACESTATE_MEMBERS:
        return ""
    keys = set()
    for member in members:
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match["key"] in keys:
            return ""
        keys.add(match["key"])
    return ",".join(members)


_MAX_TRACESTATE_MEMBERS = 32
_TRACESTATE_MEMBER = re.compile(
    r"(?P<key>[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
