"""Decision → Envoy CheckResponse, as wire bytes. The only place that shapes what
clients and upstreams see: x-abuse-* headers, problem+json (RFC 9457) and GraphQL
error bodies, and the dynamic metadata Envoy copies into its access log.

Responses are written straight to the protobuf wire format (``wire.py``): the gRPC
handler returns bytes. Everything that depends only on the policy is encoded
once and cached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache

from google.rpc import code_pb2

from sidecar.pipeline.verdict import REASONS, TYPE_BASE, Decision, Deny, Reason
from sidecar.server import wire

# Upstream headers we own: a client-sent copy is always overwritten or removed,
# so an upstream can trust them.
OWNED_HEADERS = (
    "x-abuse-policy",
    "x-abuse-subject",
    "x-abuse-plan",
    "x-abuse-risk",
    "x-abuse-flags",
    "x-abuse-shadow",
    "x-abuse-reason",
)
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"

_GRPC_CODE = {401: code_pb2.UNAUTHENTICATED, 503: code_pb2.UNAVAILABLE}
_RETRY_REASONS = (Reason.RATE_LIMITED, Reason.BUDGET_EXHAUSTED, Reason.COHORT_THROTTLED)

# -- cached pieces -----------------------------------------------------------------------

_OPTIONAL = ("x-abuse-subject", "x-abuse-plan", "x-abuse-flags", "x-abuse-shadow")
_RISK_HEADER = tuple(wire.ok_header("x-abuse-risk", str(risk)) for risk in range(101))
_RISK_META = tuple(wire.metadata_entry("risk", risk) for risk in range(101))
_ALLOW_META = wire.metadata_entry("decision", "allow")
_DENY_META = wire.metadata_entry("decision", "deny")
_NO_POLICY_OK = wire.ok_header("x-abuse-policy", "none")
_NO_POLICY = wire.check_response(code_pb2.OK, wire.CHECK_OK, _NO_POLICY_OK, b"")
_policy_header: dict[str, bytes] = {}
_policy_meta: dict[str, bytes] = {}


def _policy_pieces(policy: str) -> tuple[bytes, bytes]:
    header = _policy_header.get(policy)
    if header is None:
        header = wire.ok_header("x-abuse-policy", policy)
        _policy_header[policy] = header
        _policy_meta[policy] = wire.metadata_entry("policy", policy)
    return header, _policy_meta[policy]


def _clamp_risk(risk: int) -> int:
    return 0 if risk < 0 else 100 if risk > 100 else risk


def forged_headers(request_headers: Mapping[str, str]) -> tuple[str, ...]:
    """The upstream headers we own that the client sent itself.

    Only these need ``headers_to_remove``: asking Envoy to remove absent headers on
    every allowed request costs it measurable CPU for nothing, and the request's
    headers are all in the CheckRequest, so we know which ones are there."""
    return tuple(name for name in OWNED_HEADERS if name in request_headers)


def allow_without_policy(request_headers: Mapping[str, str] | None) -> bytes:
    """No policy is bound: allow, tell the upstream so, and strip forged x-abuse-*
    (all of them when the request's headers are unknown)."""
    forged = OWNED_HEADERS if request_headers is None else forged_headers(request_headers)
    remove = [name for name in forged if name != "x-abuse-policy"]
    if not remove:
        return _NO_POLICY
    ok = _NO_POLICY_OK + wire.headers_to_remove(remove)
    return wire.check_response(code_pb2.OK, wire.CHECK_OK, ok, b"")


def _metadata(decision: Decision, client_ip: str, policy_meta: bytes) -> bytes:
    out = policy_meta + (_ALLOW_META if decision.deny is None else _DENY_META)
    out += wire.metadata_entry("client_ip", client_ip) + _RISK_META[_clamp_risk(decision.risk)]
    if decision.subject:
        out += wire.metadata_entry("subject", decision.subject)
    if decision.plan:
        out += wire.metadata_entry("plan", decision.plan)
    if decision.api_key_id:
        out += wire.metadata_entry("api_key", decision.api_key_id)
    if decision.deny is not None:
        out += wire.metadata_entry("reason", decision.deny.reason.value)
    elif decision.shadow is not None:
        out += wire.metadata_entry("shadow_reason", decision.shadow.reason.value)
    return out


def render(
    decision: Decision,
    client_ip: str,
    request_headers: Mapping[str, str],
    *,
    metadata: bool = True,
) -> bytes:
    """The CheckResponse for a decision.

    Denials and shadow would-be denials always carry the decision as dynamic
    metadata (Envoy copies it into its access log); plain allows only when
    ``metadata`` is set: when the policy counts responses (the access-log stream
    then needs to know who each request was) or the operator asked for it on
    every request (``ABUSE_SIDECAR_DECISION_METADATA=always``). Envoy parses,
    stores and logs every metadata field, on every request."""
    if decision.deny is not None:
        policy_meta = _policy_pieces(decision.policy)[1]
        return _denied(decision, decision.deny, _metadata(decision, client_ip, policy_meta))
    forged = forged_headers(request_headers)
    if metadata or forged or decision.shadow:
        return _allow(decision, client_ip, forged, metadata=metadata)
    # The common allow depends on nothing request-specific but who the caller is:
    # the same few (policy, risk, subject, plan, flags) answer most Checks. Only
    # response headers (RateLimit: what remains) change from one request to the next.
    if decision.response_headers:
        ok = _plain_ok(
            decision.policy, decision.risk, decision.subject, decision.plan, decision.flags
        ) + wire.response_headers_to_add(decision.response_headers)
        return wire.check_response(code_pb2.OK, wire.CHECK_OK, ok, b"")
    return _plain_allow(
        decision.policy, decision.risk, decision.subject, decision.plan, decision.flags
    )


# Headers every allow sets, so a forged copy is overwritten rather than removed.
_ALWAYS_SET = frozenset(("x-abuse-policy", "x-abuse-risk"))


@lru_cache(maxsize=16_384)
def _plain_allow(
    policy: str, risk: int, subject: str | None, plan: str | None, flags: tuple[str, ...]
) -> bytes:
    ok = _plain_ok(policy, risk, subject, plan, flags)
    return wire.check_response(code_pb2.OK, wire.CHECK_OK, ok, b"")


@lru_cache(maxsize=16_384)
def _plain_ok(
    policy: str, risk: int, subject: str | None, plan: str | None, flags: tuple[str, ...]
) -> bytes:
    """The OkHttpResponse body of an allow without metadata, forged or response headers."""
    decision = Decision(
        allowed=True, policy=policy, subject=subject, plan=plan, risk=risk, flags=flags
    )
    return _ok_body(decision, ())


def _ok_body(decision: Decision, forged: tuple[str, ...]) -> bytes:
    """Upstream headers (ours, forged copies removed), without response headers."""
    policy_header = _policy_pieces(decision.policy)[0]
    ok = policy_header + _RISK_HEADER[_clamp_risk(decision.risk)]
    values = (
        decision.subject,
        decision.plan,
        ",".join(decision.flags),
        decision.shadow.reason.value if decision.shadow else "",
    )
    ours = [(name, value) for name, value in zip(_OPTIONAL, values, strict=True) if value]
    for name, value in ours:
        ok += wire.ok_header(name, value)
    if forged:
        # Headers we set overwrite the client's copy; the others must go.
        kept = _ALWAYS_SET.union(name for name, _ in ours)
        ok += wire.headers_to_remove(name for name in forged if name not in kept)
    return ok


def _allow(decision: Decision, client_ip: str, forged: tuple[str, ...], *, metadata: bool) -> bytes:
    ok = _ok_body(decision, forged)
    if decision.response_headers:
        ok += wire.response_headers_to_add(decision.response_headers)
    policy_meta = _policy_pieces(decision.policy)[1]
    meta = b""
    if metadata or decision.shadow is not None:
        meta = _metadata(decision, client_ip, policy_meta)
    return wire.check_response(code_pb2.OK, wire.CHECK_OK, ok, meta)


def deny_body(deny: Deny, policy: str) -> tuple[str, bytes]:
    """(content type, body) of a denial."""
    spec = REASONS[deny.reason]
    if spec.body == "graphql":
        extensions = {"code": deny.reason.value.upper(), **deny.extensions}
        body = {"errors": [{"message": deny.detail, "extensions": extensions}]}
        return "application/json", json.dumps(body, separators=(",", ":")).encode()
    problem = {
        "type": TYPE_BASE + deny.reason.value,
        "title": spec.title,
        "status": spec.status,
        "detail": deny.detail,
        "policy": policy,
        "rule": deny.rule,
    }
    return "application/problem+json", json.dumps(problem, separators=(",", ":")).encode()


def _denied(decision: Decision, deny: Deny, metadata: bytes) -> bytes:
    status = REASONS[deny.reason].status
    content_type, body = deny_body(deny, decision.policy)
    headers = [
        ("content-type", content_type),
        ("x-abuse-reason", deny.reason.value),
        ("x-abuse-policy", decision.policy),
        *deny.headers,
    ]
    headers.extend((k, v) for k, v in decision.response_headers if k.lower() != "retry-after")
    if deny.reason in _RETRY_REASONS and not any(
        k.lower() == "retry-after" for k, _ in deny.headers
    ):
        headers.append(("retry-after", "1"))
    denied = wire.denied_response(status, (wire.header_option(k, v) for k, v in headers), body)
    return wire.check_response(
        _GRPC_CODE.get(status, code_pb2.PERMISSION_DENIED), wire.CHECK_DENIED, denied, metadata
    )


def malformed_request() -> bytes:
    """The CheckRequest itself could not be decoded: a 400 with a problem body."""
    problem = {
        "type": TYPE_BASE + "malformed_request",
        "title": "Malformed request",
        "status": 400,
        "detail": "The request could not be read.",
        "policy": "none",
        "rule": "",
    }
    denied = wire.denied_response(
        400,
        [wire.header_option("content-type", "application/problem+json")],
        json.dumps(problem, separators=(",", ":")).encode(),
    )
    return wire.check_response(code_pb2.INVALID_ARGUMENT, wire.CHECK_DENIED, denied, b"")
