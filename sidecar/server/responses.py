"""Decision → Envoy CheckResponse, as wire bytes. The only place that shapes what
clients and upstreams see: x-abuse-* headers, problem+json (RFC 9457) and GraphQL
error bodies, and the dynamic metadata Envoy copies into its access log.

Responses are written straight to the protobuf wire format (``wire.py``): the gRPC
handler returns bytes. Everything that depends only on the policy is encoded
once and cached.
"""

from __future__ import annotations

import json

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
# headers_to_remove for each combination of optional headers that are NOT set
# (bit i set: _OPTIONAL[i] is absent and must be removed), plus x-abuse-reason.
_REMOVE = tuple(
    wire.headers_to_remove(
        ["x-abuse-reason", *(name for i, name in enumerate(_OPTIONAL) if mask & (1 << i))]
    )
    for mask in range(1 << len(_OPTIONAL))
)
_RISK_HEADER = tuple(
    wire.length_delimited(wire.OK_HEADERS, wire.header_option("x-abuse-risk", str(risk)))
    for risk in range(101)
)
_RISK_META = tuple(wire.metadata_entry("risk", risk) for risk in range(101))
_ALLOW_META = wire.metadata_entry("decision", "allow")
_DENY_META = wire.metadata_entry("decision", "deny")
_policy_header: dict[str, bytes] = {}
_policy_meta: dict[str, bytes] = {}


def _policy_pieces(policy: str) -> tuple[bytes, bytes]:
    header = _policy_header.get(policy)
    if header is None:
        header = wire.length_delimited(
            wire.OK_HEADERS, wire.header_option("x-abuse-policy", policy)
        )
        _policy_header[policy] = header
        _policy_meta[policy] = wire.metadata_entry("policy", policy)
    return header, _policy_meta[policy]


def _clamp_risk(risk: int) -> int:
    return 0 if risk < 0 else 100 if risk > 100 else risk


def allow_without_policy() -> bytes:
    """No policy is bound: allow, tell the upstream so, and strip forged x-abuse-*."""
    ok = wire.length_delimited(wire.OK_HEADERS, wire.header_option("x-abuse-policy", "none"))
    ok += wire.headers_to_remove(h for h in OWNED_HEADERS if h != "x-abuse-policy")
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
    return out


def render(decision: Decision, client_ip: str) -> bytes:
    policy_header, policy_meta = _policy_pieces(decision.policy)
    if decision.deny is not None:
        return _denied(decision, decision.deny, _metadata(decision, client_ip, policy_meta))
    ok = policy_header + _RISK_HEADER[_clamp_risk(decision.risk)]
    absent = 0
    for bit, value in enumerate(
        (
            decision.subject,
            decision.plan,
            ",".join(decision.flags),
            decision.shadow.reason.value if decision.shadow else "",
        )
    ):
        if value:
            ok += wire.length_delimited(wire.OK_HEADERS, wire.header_option(_OPTIONAL[bit], value))
        else:
            absent |= 1 << bit
    ok += _REMOVE[absent]
    if decision.response_headers:
        ok += wire.response_headers_to_add(
            wire.header_option(k, v) for k, v in decision.response_headers
        )
    return wire.check_response(
        code_pb2.OK, wire.CHECK_OK, ok, _metadata(decision, client_ip, policy_meta)
    )


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
