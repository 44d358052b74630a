"""The Explain RPC (proto/abuse_sidecar/v1/explain.proto): a Check that also
returns each step's inputs and verdict."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.message import DecodeError

from sidecar.api import explain_pb2, explain_pb2_grpc
from sidecar.compiled.hosts import normalize_host
from sidecar.compiled.paths import normalize_path, split_path
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import REASONS
from sidecar.server.authz import Authorizer
from sidecar.server.requests import context_from_check


def context_from_http(http: Any) -> RequestContext:
    path, query = split_path(http.path or "/")
    headers = {k.lower(): v for k, v in http.headers.items()}
    return RequestContext(
        method=(http.method or "GET").upper(),
        path=normalize_path(path or "/"),
        raw_path=http.path or "/",
        query=query,
        host=normalize_host(http.host or headers.get("host", "")),
        headers=headers,
        body=bytes(http.body),
        source_ip=http.source_ip or "127.0.0.1",
        source_principal=http.source_principal,
        context_extensions=dict(http.context_extensions),
        explain=True,
    )


async def explain(authorizer: Authorizer, ctx: RequestContext) -> dict[str, Any]:
    """The contract's ``check --output json`` shape for one request."""
    policy = authorizer.bind(ctx)
    if policy is None:
        return {
            "decision": "allow",
            "status": 200,
            "reason": "",
            "policy": "none",
            "rule": "",
            "steps": [{"step": "binding", "verdict": "skip", "detail": "no policy bound"}],
        }
    decision = await authorizer.decide(ctx, policy)
    out: dict[str, Any] = {
        "decision": "allow" if decision.deny is None else "deny",
        "status": REASONS[decision.deny.reason].status if decision.deny else 200,
        "reason": decision.reason,
        "policy": decision.policy,
        "rule": decision.rule,
        "clientIP": ctx.client_ip,
        "subject": decision.subject,
        "plan": decision.plan,
        "risk": decision.risk,
        "flags": list(decision.flags),
        "steps": [r.as_dict() for r in ctx.reports],
    }
    if decision.shadow is not None:
        out["shadow"] = decision.shadow.reason.value
    return out


class ExplainService(explain_pb2_grpc.ExplainerServicer):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Explain(
        self, request: explain_pb2.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> explain_pb2.ExplainResponse:
        if request.HasField("check_request"):
            try:
                check = CheckRequest.FromString(request.check_request)
            except DecodeError:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "check_request is not a CheckRequest"
                )
            ctx = context_from_check(check, explain=True)
        else:
            ctx = context_from_http(request.http)
        result = await explain(self._authorizer, ctx)
        response = explain_pb2.ExplainResponse(
            decision=result["decision"],
            status=result["status"],
            reason=result["reason"],
            policy=result["policy"],
            rule=result["rule"],
            shadow_reason=result.get("shadow", ""),
        )
        for report in result["steps"]:
            step = response.steps.add(step=report["step"], verdict=report["verdict"])
            details = {k: v for k, v in report.items() if k not in ("step", "verdict")}
            step.details.update(_jsonable(details))
        return response


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
