"""Issue 9 through real Envoy: a client's ``traceparent`` crosses Envoy's ext_authz
filter into the sidecar, whose spans reach a real OTLP collector parented to it.
The same requests carry every kind of credential: none is in a span or the log."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

from sidecar.observability.tracing import CHECK_SPAN
from tests.harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.harness.stack import Stack
from tests.integration.observability_support import (
    HOST,
    POLICY_ID,
    SECRETS,
    STEPS_OF_AN_ALLOW,
    SUBJECT,
    secret_headers,
    write_policy,
)

pytestmark = pytest.mark.e2e


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64) | 1:016x}"
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _check(spans: list[ReceivedSpan]) -> ReceivedSpan:
    [check] = [s for s in spans if s.name == CHECK_SPAN]
    return check


async def test_spans_of_requests_through_envoy_continue_the_client_trace(
    stack: Stack, tmp_path: Path
) -> None:
    async with OtlpReceiver() as collector:
        app = stack.upstream()
        sidecar = await asyncio.to_thread(
            stack.sidecar,
            policies=[write_policy(tmp_path)],
            extra_args=["--otlp-endpoint", collector.endpoint],
        )
        envoy = await asyncio.to_thread(stack.envoy, sidecar, app)
        allowed_tp, allowed_trace, allowed_parent = _traceparent()
        denied_tp, denied_trace, denied_parent = _traceparent()
        async with httpx.AsyncClient(timeout=10) as client:
            allowed = await client.get(
                envoy.url("/api/items"),
                headers={"host": HOST, "traceparent": allowed_tp, **secret_headers()},
            )
            denied = await client.post(
                envoy.url("/.env"),
                headers={"host": HOST, "traceparent": denied_tp, **secret_headers()},
                content=json.dumps({"password": SECRETS[-2]}),
            )
        assert (allowed.status_code, denied.status_code) == (200, 403)

        def both_arrived(spans: list[ReceivedSpan]) -> bool:
            names = {(s.trace_id, s.name) for s in spans}
            return {(allowed_trace, CHECK_SPAN), (denied_trace, CHECK_SPAN)} <= names

        await collector.wait_for(both_arrived)
        allowed_spans, denied_spans = collector.trace(allowed_trace), collector.trace(denied_trace)

    check = _check(allowed_spans)
    assert check.parent_span_id == allowed_parent
    assert (
        check.attributes["abuse_sidecar.policy"],
        check.attributes["abuse_sidecar.decision"],
    ) == (POLICY_ID, "allow")
    assert check.attributes["abuse_sidecar.subject"] == SUBJECT
    steps = sorted(
        s.attributes["abuse_sidecar.step"]
        for s in allowed_spans
        if "abuse_sidecar.step" in s.attributes
    )
    assert steps == sorted(STEPS_OF_AN_ALLOW)
    assert all(s.parent_span_id == check.span_id for s in allowed_spans if s is not check)

    denial = _check(denied_spans)
    assert denial.parent_span_id == denied_parent
    assert (denial.attributes["abuse_sidecar.reason"], denial.attributes["abuse_sidecar.rule"]) == (
        "honeypot",
        "honeypots",
    )

    exported = json.dumps(
        [[s.name, s.attributes, s.trace_state] for s in allowed_spans + denied_spans]
    )
    log = sidecar.process.log_text()
    for secret in SECRETS:
        assert secret not in exported
        assert secret not in log
