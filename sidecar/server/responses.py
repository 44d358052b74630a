"""Decision → Envoy CheckResponse. The only place that shapes what clients and
upstreams see: x-abuse-* headers, problem+json (RFC 9457) and GraphQL error bodies.
"""

from __future__ import annotations

import json

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import (
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2, status_pb2

from sidecar.pipeline.verdict import REASONS, TYPE_BASE, Decision, Deny, Reason

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
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

_OK = status_pb2.Status(code=code_pb2.OK)
_GRPC_CODE = {401: code_pb2.UNAUTHENTICATED, 503: code_pb2.UNAVAILABLE}


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def allow_without_policy() -> CheckResponse:
    """No policy is bound: allow, tell the upstream so, and strip forged x-abuse-*."""
    return CheckResponse(
        status=_OK,
        ok_response=OkHttpResponse(
            headers=[_header("x-abuse-policy", "none")],
            headers_to_remove=[h for h in OWNED_HEADERS if h != "x-abuse-policy"],
        ),
    )


def _metadata(decision: Decision, client_ip: str) -> Struct:
    # Field by field: about three times cheaper than Struct.update(dict) per Check.
    meta = Struct()
    fields = meta.fields
    fields["policy"].string_value = decision.policy
    fields["decision"].string_value = "allow" if decision.deny is None else "deny"
    fields["client_ip"].string_value = client_ip
    fields["risk"].number_value = decision.risk
    if decision.subject:
        fields["subject"].string_value = decision.subject
    if decision.plan:
        fields["plan"].string_value = decision.plan
    if decision.api_key_id:
        fields["api_key"].string_value = decision.api_key_id
    if decision.deny is not None:
        fields["reason"].string_value = decision.deny.reason.value
    return meta


def render(decision: Decision, client_ip: str) -> CheckResponse:
    if decision.deny is not None:
        return _denied(decision, decision.deny, client_ip)
    headers = [
        _header("x-abuse-policy", decision.policy),
        _header("x-abuse-risk", str(decision.risk)),
    ]
    remove: list[str] = ["x-abuse-reason"]
    for name, value in (
        ("x-abuse-subject", decision.subject),
        ("x-abuse-plan", decision.plan),
        ("x-abuse-flags", ",".join(decision.flags)),
        ("x-abuse-shadow", decision.shadow.reason.value if decision.shadow else ""),
    ):
        if value:
            headers.append(_header(name, value))
        else:
            remove.append(name)
    return CheckResponse(
        status=_OK,
        ok_response=OkHttpResponse(
            headers=headers,
            headers_to_remove=remove,
            response_headers_to_add=[_header(k, v) for k, v in decision.response_headers],
        ),
        dynamic_metadata=_metadata(decision, client_ip),
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


def _denied(decision: Decision, deny: Deny, client_ip: str) -> CheckResponse:
    status = REASONS[deny.reason].status
    content_type, body = deny_body(deny, decision.policy)
    headers = [
        _header("content-type", content_type),
        _header("x-abuse-reason", deny.reason.value),
        _header("x-abuse-policy", decision.policy),
        *(_header(k, v) for k, v in deny.headers),
    ]
    headers.extend(
        _header(k, v) for k, v in decision.response_headers if k.lower() != "retry-after"
    )
    if deny.reason in (
        Reason.RATE_LIMITED,
        Reason.BUDGET_EXHAUSTED,
        Reason.COHORT_THROTTLED,
    ) and not any(k.lower() == "retry-after" for k, _ in deny.headers):
        headers.append(_header("retry-after", "1"))
    return CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE.get(status, code_pb2.PERMISSION_DENIED)),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=status),
            headers=headers,
            body=body.decode(),
        ),
        dynamic_metadata=_metadata(decision, client_ip),
    )


def malformed_request() -> CheckResponse:
    """The CheckRequest itself could not be decoded: a 400 with a problem body."""
    problem = {
        "type": TYPE_BASE + "malformed_request",
        "title": "Malformed request",
        "status": 400,
        "detail": "The request could not be read.",
        "policy": "none",
        "rule": "",
    }
    return CheckResponse(
        status=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=400),
            headers=[_header("content-type", "application/problem+json")],
            body=json.dumps(problem),
        ),
    )
