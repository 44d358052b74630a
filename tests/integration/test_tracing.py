"""Traces: what a real OTLP collector receives from the sidecar (CONTRACT.md section 5).

The collector is the ``TraceService`` servicer of ``opentelemetry-proto`` on a
grpc.aio server (tests/harness/otlp_receiver.py), so every span is decoded by
the official messages. The sidecar runs as operators run it
(``python -m sidecar serve --otlp-endpoint ...``) and gets real gRPC Checks;
the in-process tests below drive ``Authorizer.check`` for what a subprocess
cannot show (a store failing, sampling decisions, the encoder against the
official decoder).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from prometheus_client import REGISTRY

from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text
from sidecar.observability import otlp
from sidecar.observability.tracing import (
    CHECK_SPAN,
    STORE_SPAN,
    build_tracing,
    parse_traceparent,
    start_tracing,
    valid_trace_state,
)
from sidecar.pipeline.engine import Engine
from sidecar.server.authz import Authorizer
from sidecar.server.requests import context_from_check
from sidecar.stores.memory import MemoryStore
from sidecar.stores.open import open_store
from tests.harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess, start_sidecar
from tests.integration.observability_support import (
    API_KEY,
    BODY_SECRET,
    POLICY,
    POLICY_ID,
    SECRETS,
    STEPS_OF_AN_ALLOW,
    SUBJECT,
    CheckClient,
    check_request,
    secret_headers,
    status_of,
    write_policy,
)

KIND_SERVER, KIND_INTERNAL, KIND_CLIENT = 2, 1, 3
STATUS_ERROR = 2


def _traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id = f"{random.getrandbits(128):032x}"
    span_id = f"{random.getrandbits(64) | 1:016x}"
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def _check_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    found = [s for s in spans if s.name == CHECK_SPAN]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _has_check_span(trace_id: str):  # type: ignore[no-untyped-def]
    return lambda spans: any(s.trace_id == trace_id and s.name == CHECK_SPAN for s in spans)


def _assert_no_secrets(spans: list[ReceivedSpan]) -> None:
    text = json.dumps([[s.name, s.attributes, s.trace_state, s.status_message] for s in spans])
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
async def collector() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def traced(
    collector: OtlpReceiver, tmp_path: Path, log_dir: Path
) -> AsyncIterator[tuple[SidecarProcess, CheckClient]]:
    sidecar = await asyncio.to_thread(
        start_sidecar,
        log_dir=log_dir,
        policies=[write_policy(tmp_path)],
        extra_args=["--otlp-endpoint", collector.endpoint],
    )
    client = CheckClient(sidecar.grpc_target)
    try:
        yield sidecar, client
    finally:
        await client.close()
        await asyncio.to_thread(sidecar.stop)


async def test_an_allowed_check_continues_the_client_trace_with_a_span_per_step(
    collector: OtlpReceiver, traced: tuple[SidecarProcess, CheckClient]
) -> None:
    _, client = traced
    traceparent, trace_id, client_span = _traceparent()
    headers = {**secret_headers(), "traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE"}
    response = await client.check(
        check_request(path=f"/api/items?token={BODY_SECRET}", headers=headers, body=BODY_SECRET)
    )
    assert status_of(response) == 200

    spans = collector.trace(trace_id) if await collector.wait_for(_has_check_span(trace_id)) else []
    check = _check_span(spans)
    assert check.parent_span_id == client_span
    assert check.kind == KIND_SERVER
    assert check.trace_state == "congo=t61rcWkgMzE"
    assert check.attributes["abuse_sidecar.policy"] == POLICY_ID
    assert check.attributes["abuse_sidecar.decision"] == "allow"
    assert check.attributes["abuse_sidecar.subject"] == SUBJECT
    assert check.attributes["abuse_sidecar.risk"] == 0
    assert check.attributes["client.address"] == "198.51.100.7"
    assert "abuse_sidecar.reason" not in check.attributes
    assert check.resource["service.name"] == "abuse-sidecar"

    children = [s for s in spans if s is not check]
    assert all(s.parent_span_id == check.span_id for s in children)
    assert all(check.start_ns <= s.start_ns <= s.end_ns <= check.end_ns for s in children)
    steps = {s.attributes["abuse_sidecar.step"]: s for s in children if s.kind == KIND_INTERNAL}
    assert sorted(steps) == sorted(STEPS_OF_AN_ALLOW)
    assert {s.name for s in steps.values()} == {
        f"abuse_sidecar.step.{n}" for n in STEPS_OF_AN_ALLOW
    }
    assert all(s.attributes["abuse_sidecar.verdict"] == "allow" for s in steps.values())
    store = [s for s in children if s.name == STORE_SPAN]
    assert len(store) == 1
    assert store[0].kind == KIND_CLIENT
    assert store[0].attributes["abuse_sidecar.store"] == "memory"
    ops = sum(s.attributes.get("abuse_sidecar.store.operations", 0) for s in steps.values())
    assert store[0].attributes["abuse_sidecar.store.operations"] == ops > 0
    _assert_no_secrets(spans)


async def test_denied_checks_say_which_step_denied_and_why(
    collector: OtlpReceiver, traced: tuple[SidecarProcess, CheckClient]
) -> None:
    _, client = traced
    honeypot_tp, honeypot_trace, _ = _traceparent()
    anonymous_tp, anonymous_trace, _ = _traceparent()
    responses = [
        await client.check(
            check_request(
                path="/.env",
                source_ip="198.51.100.99",
                headers={**secret_headers(), "traceparent": honeypot_tp},
            )
        ),
        await client.check(check_request(headers={"traceparent": anonymous_tp})),
    ]
    assert [status_of(r) for r in responses] == [403, 401]

    await collector.wait_for(
        lambda s: _has_check_span(honeypot_trace)(s) and _has_check_span(anonymous_trace)(s)
    )
    honeypot = collector.trace(honeypot_trace)
    check = _check_span(honeypot)
    assert (
        check.attributes["abuse_sidecar.decision"],
        check.attributes["abuse_sidecar.reason"],
    ) == ("deny", "honeypot")
    assert check.attributes["abuse_sidecar.rule"] == "honeypots"
    step = next(s for s in honeypot if s.attributes.get("abuse_sidecar.step") == "honeypot")
    assert (step.attributes["abuse_sidecar.verdict"], step.attributes["abuse_sidecar.reason"]) == (
        "deny",
        "honeypot",
    )
    assert step.attributes["abuse_sidecar.phase"] == "local"
    # A local deny stops the local phase: no span for the steps after it.
    assert not any(s.attributes.get("abuse_sidecar.step") == "identity" for s in honeypot)

    anonymous = collector.trace(anonymous_trace)
    assert _check_span(anonymous).attributes["abuse_sidecar.reason"] == "missing_credentials"
    identity = next(s for s in anonymous if s.attributes.get("abuse_sidecar.step") == "identity")
    assert identity.attributes["abuse_sidecar.verdict"] == "deny"
    _assert_no_secrets(honeypot + anonymous)


async def test_unsampled_parents_are_not_recorded_and_root_checks_start_a_trace(
    collector: OtlpReceiver, traced: tuple[SidecarProcess, CheckClient]
) -> None:
    _, client = traced
    unsampled_tp, unsampled_trace, _ = _traceparent(sampled=False)
    marker_tp, marker_trace, _ = _traceparent()
    await client.check(check_request(headers={"x-api-key": API_KEY, "traceparent": unsampled_tp}))
    await client.check(
        check_request(headers={"x-api-key": API_KEY, "traceparent": "00-not-a-trace"})
    )
    await client.check(check_request(headers={"x-api-key": API_KEY, "traceparent": marker_tp}))

    # Spans leave in order: once the marker's are in, the earlier Checks' would be too.
    await collector.wait_for(_has_check_span(marker_trace))
    assert collector.trace(unsampled_trace) == []
    checks = [s for s in collector.spans if s.name == CHECK_SPAN]
    roots = [s for s in checks if not s.parent_span_id]
    assert len(checks) == 2
    assert len(roots) == 1  # the malformed traceparent: a new trace, sampled at 1.0
    assert roots[0].trace_id not in (unsampled_trace, marker_trace)


async def test_the_decision_log_names_the_exported_trace_and_span(
    collector: OtlpReceiver, traced: tuple[SidecarProcess, CheckClient]
) -> None:
    sidecar, client = traced
    traceparent, trace_id, _ = _traceparent()
    await client.check(check_request(headers={"traceparent": traceparent}))  # 401: logged
    await collector.wait_for(_has_check_span(trace_id))
    check = _check_span(collector.trace(trace_id))

    lines = [
        json.loads(line) for line in sidecar.process.log_text().splitlines() if line.startswith("{")
    ]
    decisions = [line for line in lines if line.get("logger") == "sidecar.decisions"]
    assert [(d["trace_id"], d["span_id"]) for d in decisions] == [(trace_id, check.span_id)]


# -- in process ---------------------------------------------------------------------------


async def test_a_failing_store_is_an_error_span_and_the_check_follows_failure_mode(
    collector: OtlpReceiver,
) -> None:
    registry = PolicyRegistry(Resources())
    registry.replace_source(
        "test",
        load_text(POLICY.replace("spec:\n", "spec:\n  failureMode: closed\n"), "policy.yaml"),
    )
    down = open_store(f"redis://127.0.0.1:{free_port()}/0", command_timeout_ms=200)
    tracing = await start_tracing(collector.endpoint, 1.0)
    authorizer = Authorizer(registry, Engine(down, MemoryStore()), tracing=tracing)
    traceparent, trace_id, _ = _traceparent()
    try:
        response = CheckResponse.FromString(
            await authorizer.check(
                check_request(headers={"x-api-key": API_KEY, "traceparent": traceparent})
            )
        )
        await tracing.exporter.flush()
    finally:
        await tracing.aclose()
        await down.close()

    assert status_of(response) == 503
    spans = collector.trace(trace_id)
    check = _check_span(spans)
    assert (
        check.attributes["abuse_sidecar.decision"],
        check.attributes["abuse_sidecar.reason"],
    ) == ("deny", "store_unavailable")
    store = next(s for s in spans if s.name == STORE_SPAN)
    assert (store.status_code, store.status_message) == (STATUS_ERROR, "StoreUnavailable")
    assert store.attributes["error.type"] == "StoreUnavailable"
    assert store.attributes["abuse_sidecar.store"] == down.name


def test_sampling_follows_a_valid_parent_else_the_ratio() -> None:
    never, always, quarter = (build_tracing("http://127.0.0.1:4317", r) for r in (0.0, 1.0, 0.25))
    sampled_parent, _, _ = _traceparent(sampled=True)
    unsampled_parent, _, _ = _traceparent(sampled=False)

    def ctx(traceparent: str | None):  # type: ignore[no-untyped-def]
        return context_from_check(
            check_request(headers={"traceparent": traceparent} if traceparent else {})
        )

    assert never.start_check(ctx(None)) is None
    assert never.start_check(ctx(sampled_parent)) is not None
    assert always.start_check(ctx(unsampled_parent)) is None
    assert always.start_check(ctx(None)) is not None
    roots = 4000
    share = sum(quarter.start_check(ctx(None)) is not None for _ in range(roots)) / roots
    assert 0.2 < share < 0.3  # binomial sd 0.007: this fails only if the ratio is not applied


_HEX = "0123456789abcdef"


@st.composite
def traceparents(draw: st.DrawFn) -> str:
    """Valid ones and every way of getting one wrong."""
    version = draw(st.sampled_from(["00", "01", "ff", "0g", "0"]))
    trace_id = draw(
        st.one_of(
            st.text(_HEX, min_size=32, max_size=32),
            st.just("0" * 32),
            st.text(_HEX + "A", min_size=31, max_size=33),
        )
    )
    span_id = draw(
        st.one_of(
            st.text(_HEX, min_size=16, max_size=16),
            st.just("0" * 16),
            st.text(_HEX + "G", min_size=15, max_size=17),
        )
    )
    flags = draw(st.sampled_from(["00", "01", "03", "ff", "1"]))
    rest = draw(st.sampled_from(["", "-extra", "-"]))
    return f"{version}-{trace_id}-{span_id}-{flags}{rest}"


@settings(max_examples=500, deadline=None)
@given(traceparents())
def test_traceparent_parsing_agrees_with_the_opentelemetry_propagator(value: str) -> None:
    context = TraceContextTextMapPropagator().extract({"traceparent": value})
    reference = get_current_span(context).get_span_context()
    parsed = parse_traceparent(value)
    if not reference.is_valid:
        assert parsed is None
    else:
        assert parsed == (reference.trace_id, reference.span_id, reference.trace_flags.sampled)


attribute_values = st.one_of(
    st.text(max_size=300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=40), attribute_values, max_size=8),
    name=st.text(min_size=1, max_size=200),
    times=st.tuples(st.integers(0, 2**63), st.integers(0, 2**63)),
)
def test_encoded_spans_decode_with_the_official_messages(
    attributes: dict[str, str | int | bool | float], name: str, times: tuple[int, int]
) -> None:
    trace_id, span_id, parent = random.randbytes(16), random.randbytes(8), random.randbytes(8)
    encoded = otlp.encode_span(
        otlp.span_context(trace_id, parent, "k=v"),
        span_id,
        otlp.name_and_kind(name, otlp.KIND_CLIENT),
        times[0],
        times[1],
        b"".join(otlp.span_attribute(k, v) for k, v in attributes.items()),
        otlp.status_error("TimeoutError"),
    )
    envelope = otlp.Envelope.build({"service.name": "abuse-sidecar", "pid": 7}, "sidecar", "1.2")
    request = ExportTraceServiceRequest.FromString(envelope.request([encoded, encoded]))

    resource_spans = request.resource_spans[0]
    assert {kv.key for kv in resource_spans.resource.attributes} == {"service.name", "pid"}
    scope_spans = resource_spans.scope_spans[0]
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("sidecar", "1.2")
    assert len(scope_spans.spans) == 2
    span = scope_spans.spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (trace_id, span_id, parent)
    assert (span.name, span.kind, span.trace_state) == (name, KIND_CLIENT, "k=v")
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == times
    assert (span.status.code, span.status.message) == (STATUS_ERROR, "TimeoutError")
    decoded = {
        kv.key: getattr(kv.value, str(kv.value.WhichOneof("value"))) for kv in span.attributes
    }
    assert decoded == attributes


_KEY_CHARS = "abcxyz019_-*/"
tracestate_members = st.one_of(
    st.builds(
        lambda k, v: f"{k}={v}",
        st.text(_KEY_CHARS + "A@", min_size=1, max_size=12),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    ),
    st.sampled_from(["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE", "t@s=v", " ", ""]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(tracestate_members, max_size=35))
def test_tracestate_handling_agrees_with_the_opentelemetry_api(members: list[str]) -> None:
    header = ",".join(members)
    logging.getLogger("opentelemetry.trace.span").disabled = True  # its per-member warnings
    try:
        expected = TraceState.from_header([header]).to_header()
    finally:
        logging.getLogger("opentelemetry.trace.span").disabled = False
    assert valid_trace_state(header) == expected


def _dropped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("abuse_sidecar_trace_spans_dropped_total", {"reason": reason})
        or 0.0
    )


async def test_an_unreachable_collector_costs_spans_never_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    envelope = otlp.Envelope.build({"service.name": "abuse-sidecar"}, "sidecar", "test")
    exporter = otlp.OtlpExporter(
        f"http://127.0.0.1:{free_port()}", envelope, max_queue=10, batch_size=6, timeout=0.5
    )
    full, failed = _dropped("queue_full"), _dropped("export_failed")
    await exporter.start()
    try:
        started = time.perf_counter()
        for _ in range(4):
            exporter.add(b"", 3)  # the fourth Check's 3 spans do not fit in 10
        assert time.perf_counter() - started < 0.01  # adding never waits for the network
        assert _dropped("queue_full") - full == 3
        with caplog.at_level(logging.WARNING, logger="sidecar.tracing"):
            await exporter.flush()  # two batches, each retried twice, then dropped
    finally:
        await exporter.aclose()
    assert _dropped("export_failed") - failed == 9
    warnings = [r for r in caplog.records if "OTLP export" in r.getMessage()]
    assert len(warnings) == 1  # at most one a minute, however many batches fail
    assert "UNAVAILABLE" in warnings[0].getMessage()  # says why, so the operator can act


async def test_without_an_endpoint_a_check_touches_no_tracing_code() -> None:
    registry = PolicyRegistry(Resources())
    registry.replace_source("test", load_text(POLICY, "policy.yaml"))
    authorizer = Authorizer(registry, Engine(MemoryStore(), MemoryStore()))  # as serve builds it
    traceparent, _, _ = _traceparent()
    request = check_request(headers={"x-api-key": API_KEY, "traceparent": traceparent})
    await authorizer.check(request)  # warm: first-use caches are not per-Check cost

    tracemalloc.start()
    try:
        for _ in range(50):
            await authorizer.check(request)
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    observability = str(Path(otlp.__file__).parent)
    traced = snapshot.filter_traces(
        [
            tracemalloc.Filter(True, f"{observability}/tracing.py"),
            tracemalloc.Filter(True, f"{observability}/otlp.py"),
        ]
    )
    assert traced.statistics("filename") == []
