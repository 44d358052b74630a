"""Decision logs: one line per deny (per allow at debug) and never a secret.

The secrets test runs the sidecar as operators do, at debug level, sends every
kind of credential (API keys, bearer JWTs, Basic credentials, cookies, secrets
in the query string and in bodies) on allowed and denied requests, and greps
everything the process wrote for them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.observability.decision_log import (
    REDACTED,
    DecisionLog,
    DecisionRecord,
    RedactSecrets,
    install_redaction,
    scrub,
)
from sidecar.observability.logging import JsonFormatter
from sidecar.pipeline.verdict import Decision, Deny, Reason
from sidecar.server.requests import context_from_check
from tests.harness.sidecar import start_sidecar
from tests.integration.observability_support import (
    API_KEY,
    BEARER_JWT,
    BODY_SECRET,
    POLICY_ID,
    QUERY_SECRET,
    SECRETS,
    SUBJECT,
    WRONG_API_KEY,
    CheckClient,
    check_request,
    secret_headers,
    status_of,
    write_policy,
)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
DECISION_FIELDS = {
    "decision", "status", "policy", "rule", "reason", "shadow", "client_ip", "subject", "plan",
    "risk", "flags", "method", "host", "path", "trace_id", "span_id", "request_id",
}  # fmt: skip


def _requests() -> list[tuple[int, Any]]:
    """(expected status, CheckRequest): every credential, on allows and on denies."""
    everything = {**secret_headers(), "traceparent": TRACEPARENT, "x-request-id": "req-1"}
    return [
        (200, check_request(headers=everything, body=f'{{"password": "{BODY_SECRET}"}}')),
        (
            200,
            check_request(
                path=f"/search?api_key={QUERY_SECRET}",
                headers=everything,
                method="POST",
                body=BODY_SECRET,
            ),
        ),
        (401, check_request(headers={**secret_headers(WRONG_API_KEY), "traceparent": TRACEPARENT})),
        (
            401,
            check_request(
                headers={"authorization": f"Bearer {BEARER_JWT}", "cookie": "a=b"}, body=BODY_SECRET
            ),
        ),
        (
            403,
            check_request(
                path="/.env", source_ip="198.51.100.200", headers=everything, body=BODY_SECRET
            ),
        ),
        (403, check_request(source_ip="203.0.113.9", headers=everything)),
    ]


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_secrets_never_reach_the_logs_at_debug_level(
    tmp_path: Path, log_dir: Path, log_format: str
) -> None:
    sidecar = await asyncio.to_thread(
        start_sidecar,
        log_dir=log_dir,
        policies=[write_policy(tmp_path)],
        extra_args=["--log-format", log_format],
        env={"ABUSE_SIDECAR_LOG_LEVEL": "debug"},
    )
    client = CheckClient(sidecar.grpc_target)
    try:
        statuses = [
            (expected, status_of(await client.check(request))) for expected, request in _requests()
        ]
    finally:
        await client.close()
        await asyncio.to_thread(sidecar.stop)
    assert [got for _, got in statuses] == [expected for expected, _ in statuses]

    log = sidecar.process.log_text()
    decision_lines = [line for line in log.splitlines() if "sidecar.decisions" in line]
    # Allows are logged only at debug: their lines prove the level really was debug.
    assert len(decision_lines) == len(statuses)
    for secret in SECRETS:
        assert secret not in log, f"{secret!r} leaked into the log"
    assert "api.example.com" in log  # the log is not simply empty or unreadable


async def test_json_decision_lines_carry_what_on_call_needs(tmp_path: Path, log_dir: Path) -> None:
    sidecar = await asyncio.to_thread(
        start_sidecar,
        log_dir=log_dir,
        policies=[write_policy(tmp_path)],
        env={"ABUSE_SIDECAR_LOG_LEVEL": "info"},
    )
    client = CheckClient(sidecar.grpc_target)
    try:
        for _, request in _requests():
            await client.check(request)
    finally:
        await client.close()
        await asyncio.to_thread(sidecar.stop)

    lines = [
        json.loads(line) for line in sidecar.process.log_text().splitlines() if line.startswith("{")
    ]
    decisions = [line for line in lines if line["logger"] == "sidecar.decisions"]
    # At info: one line per deny, none for the two allows.
    assert [(d["decision"], d["reason"], d["status"]) for d in decisions] == [
        ("deny", "invalid_credentials", 401),
        ("deny", "missing_credentials", 401),
        ("deny", "honeypot", 403),
        ("deny", "ip_denied", 403),
    ]
    invalid = decisions[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", invalid["time"])
    assert invalid["level"] == "info"
    assert (invalid["policy"], invalid["rule"], invalid["client_ip"]) == (
        POLICY_ID,
        "identity.apiKey",
        "198.51.100.7",
    )
    assert invalid["trace_id"] == CLIENT_TRACE  # tracing off: the client's trace
    assert invalid["risk"] == 0
    assert (invalid["method"], invalid["host"], invalid["path"]) == (
        "GET",
        "api.example.com",
        "/api/items",
    )
    # The honeypot denies before identity runs: no subject established, none logged.
    assert decisions[2]["request_id"] == "req-1"
    assert "subject" not in decisions[2]
    assert decisions[3]["client_ip"] == "203.0.113.9"
    assert set(invalid) - {"time", "level", "logger", "message"} <= DECISION_FIELDS


# -- in process --------------------------------------------------------------------------


def test_a_decision_record_has_only_allowlisted_fields_and_no_request_content() -> None:
    assert {f.name for f in fields(DecisionRecord)} == DECISION_FIELDS
    ctx = context_from_check(
        check_request(
            path=f"/x?api_key={QUERY_SECRET}",
            headers={
                **secret_headers(),
                "traceparent": TRACEPARENT,
                "x-request-id": f"Bearer {BEARER_JWT}",
            },
            body=BODY_SECRET,
        )
    )
    ctx.client_ip = "198.51.100.7"
    deny = Deny(Reason.INVALID_CREDENTIALS, "identity.apiKey", "The API key is not valid.")
    record = DecisionRecord.of(ctx, Decision(allowed=False, policy=POLICY_ID, deny=deny), None)
    rendered = json.dumps(record.fields()) + record.summary()
    for secret in SECRETS:
        assert secret not in rendered
    assert record.trace_id == CLIENT_TRACE
    assert record.request_id is None  # not an id: dropped rather than logged
    assert record.path == "/x"


def _capture(level: int) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.decision_log.{level}.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    install_redaction(logger)
    return logger, stream


@pytest.mark.parametrize(("level", "allows_logged"), [(logging.INFO, False), (logging.DEBUG, True)])
def test_allows_are_logged_at_debug_only(level: int, allows_logged: bool) -> None:
    logger, stream = _capture(level)
    log = DecisionLog(logger=logger)
    ctx = context_from_check(check_request(headers={"x-api-key": API_KEY}))
    deny = Deny(Reason.RATE_LIMITED, "per-subject", "Too many requests.")
    log.record(ctx, Decision(allowed=True, policy=POLICY_ID, subject=SUBJECT), None)
    log.record(ctx, Decision(allowed=False, policy=POLICY_ID, deny=deny), None)
    log.record(ctx, Decision(allowed=True, policy=POLICY_ID, shadow=deny), None)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    expected: list[tuple[str, str | None]] = [("allow", None)] if allows_logged else []
    expected += [("deny", None), ("allow", "rate_limited")]
    assert [(line["decision"], line.get("shadow")) for line in lines] == expected
    assert API_KEY not in stream.getvalue()


def test_the_scrubber_catches_a_request_logged_by_mistake() -> None:
    logger, stream = _capture(logging.DEBUG)
    request = check_request(headers=secret_headers(), body=BODY_SECRET)
    ctx = context_from_check(request)
    logger.debug("headers %s", ctx.headers)
    logger.debug("headers as JSON %s", json.dumps(dict(ctx.headers)))
    logger.debug("raw request %s", request.attributes.request.http.headers)
    logger.info(
        "upstream said",
        extra={"auth": f"Authorization: Bearer {BEARER_JWT}", "key": f"x-api-key={API_KEY}"},
    )
    try:
        raise ValueError(f"bad credential Authorization: Basic {SECRETS[4]} cookie={SECRETS[5]}")
    except ValueError:
        logger.exception("while checking")
    output = stream.getvalue()
    for secret in SECRETS:
        if secret != BODY_SECRET:  # bodies are kept out by the allowlist, not by the scrubber
            assert secret not in output
    assert output.count(REDACTED) >= 8
    assert "ValueError" in output  # the traceback survives, scrubbed


token68 = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"),
    min_size=12,
    max_size=64,
)
FORMATS = (
    "Authorization: Bearer {s}",
    "authorization: Basic {s}==",
    "{{'x-api-key': '{s}', 'accept': '*/*'}}",
    '{{"X-Customer-Key": "{s}"}}',
    "Cookie: theme=dark; session={s}; lang=en",
    "set-cookie: sid={s}; Path=/; HttpOnly",
    "GET /v1/items?access_token={s}&page=2",
    'headers {{ key: "x-api-key" value: "{s}" }}',
    "client_secret={s}",
    "password: {s}",
    "retrying with token {s}",
)


@settings(max_examples=300, deadline=None)
@example(
    secret="000000000000", template="GET /v1/items?access_token={s}&page=2", prefix="0:", suffix=""
)
@given(
    secret=token68,
    template=st.sampled_from(FORMATS),
    prefix=st.text(max_size=20),
    suffix=st.text(max_size=20),
)
def test_scrub_removes_credentials_in_every_usual_shape(
    secret: str, template: str, prefix: str, suffix: str
) -> None:
    line = prefix + " " + template.format(s=secret) + " " + suffix
    if secret in prefix + suffix or secret in template:
        return  # the "secret" is part of the line's ordinary text
    assert secret not in scrub(line)


def test_scrub_leaves_ordinary_lines_alone() -> None:
    for line in (
        "loaded policy file /etc/abuse/policies/api.yaml",
        "gRPC listening on 0.0.0.0:9001",
        ":authority: api.example.com",
        "host api.example.com is claimed by several policies ['a/b', 'c/d']; a/b wins",
        "Redis store unavailable, circuit open: timeout after 50 ms",
    ):
        assert scrub(line) == line


def test_redaction_is_installed_once_per_handler() -> None:
    logger, _ = _capture(logging.INFO)
    install_redaction(logger)
    assert sum(isinstance(f, RedactSecrets) for f in logger.handlers[0].filters) == 1


@pytest.mark.parametrize(
    "hostile",
    [
        "a-" * 50_000,
        "key-" * 25_000 + ":",
        "eyJ" * 33_000,
        "Bearer " * 14_000,
        'token="' + "\\" * 100_000,
        "token='" + "a\\" * 50_000,
        'key: "' * 16_000,
        'x-api-key: "' * 8_000,
    ],
    ids=lambda text: text[:12],
)
def test_scrub_takes_linear_time_on_hostile_lines(hostile: str) -> None:
    # Quadratic or exponential backtracking would take minutes on 100 kB; linear takes ~10 ms.
    started = time.process_time()
    scrub(hostile)
    assert time.process_time() - started < 1.0
