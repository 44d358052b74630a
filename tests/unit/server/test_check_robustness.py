"""Bad input never crashes a worker: every CheckRequest gets a decision (issue 2).

Runs the real gRPC server in-process and talks to it over a real channel.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text
from sidecar.pipeline.engine import Engine
from sidecar.server.authz import Authorizer
from sidecar.server.grpc_server import GrpcServer
from sidecar.stores.memory import MemoryStore

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: shop, namespace: demo}
spec:
  hosts: [api.example.com]
  honeypots: {paths: [/.env]}
"""


COUNTING_POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: logins, namespace: demo}
spec:
  hosts: [login.example.com]
  cohorts:
    - {name: failed-logins, by: ip, threshold: 100, period: 7d, action: flag, for: 1h,
       responseCodes: [401], match: {paths: [/login]}}
"""


async def _serve(mode: str) -> tuple[GrpcServer, grpc.aio.Channel]:
    registry = PolicyRegistry(Resources(), default_policy="demo/shop")
    registry.replace_source("t", load_text(POLICY, "t.yaml"))
    registry.replace_source("c", load_text(COUNTING_POLICY, "c.yaml"))
    engine = Engine(MemoryStore(), MemoryStore())
    server = GrpcServer(Authorizer(registry, engine, decision_metadata=mode), "127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server, ch = await _serve("auto")
    yield ch
    await ch.close()
    await server.stop(0)


def _request(path: str = "/", host: str = "api.example.com") -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = "GET"
    http.path = path
    http.host = host
    request.attributes.source.address.socket_address.address = "198.51.100.1"
    return request


async def _check(
    ch: grpc.aio.Channel, request: external_auth_pb2.CheckRequest
) -> external_auth_pb2.CheckResponse:
    stub = external_auth_pb2_grpc.AuthorizationStub(ch)
    return await stub.Check(request, timeout=5)


async def test_empty_request_gets_a_decision(channel: grpc.aio.Channel) -> None:
    response = await _check(channel, external_auth_pb2.CheckRequest())
    assert response.HasField("ok_response")  # bound to the default policy, nothing matched


async def test_no_source_address_and_no_http_attributes(channel: grpc.aio.Channel) -> None:
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions["abuse-policy"] = "demo/shop"
    response = await _check(channel, request)
    assert response.status.code == 0


async def test_huge_headers(channel: grpc.aio.Channel) -> None:
    request = _request("/.env")
    for i in range(200):
        request.attributes.request.http.headers[f"x-filler-{i}"] = "a" * 20_000
    response = await _check(channel, request)
    assert response.denied_response.status.code == 403


async def test_non_utf8_header_bytes_via_header_map(channel: grpc.aio.Channel) -> None:
    request = _request("/.env")
    request.attributes.request.http.header_map.headers.append(
        HeaderValue(key="x-weird", raw_value=b"\xff\xfe\x80 not utf-8")
    )
    response = await _check(channel, request)
    assert response.denied_response.status.code == 403


async def test_odd_paths(channel: grpc.aio.Channel) -> None:
    for path in [
        "",
        "*",
        "no-leading-slash",
        "/%zz%",
        "/%2e%2e/%2e%2e/.env",
        "/a/../../.env?x=1",
        "//.env#frag",
    ]:
        response = await _check(channel, _request(path))
        assert response.status.code in (0, 7), path
    blocked = await _check(channel, _request("/x/%2e%2e/.env"))
    assert blocked.denied_response.status.code == 403


async def test_undecodable_bytes_get_a_400_not_an_rpc_error(channel: grpc.aio.Channel) -> None:
    raw = channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=lambda b: b,
        response_deserializer=external_auth_pb2.CheckResponse.FromString,
    )
    response = await raw(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert response.denied_response.status.code == 400
    body = json.loads(response.denied_response.body)
    assert body["status"] == 400


async def test_deny_body_is_problem_json_with_policy_and_rule(channel: grpc.aio.Channel) -> None:
    response = await _check(channel, _request("/.env"))
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-abuse-reason"] == "honeypot"
    body = json.loads(response.denied_response.body)
    assert set(body) >= {"type", "title", "status", "detail", "policy", "rule"}
    assert body["policy"] == "demo/shop"
    assert body["rule"] == "honeypots"
    assert body["status"] == 403


async def test_forged_upstream_headers_are_removed(channel: grpc.aio.Channel) -> None:
    request = _request("/products", host="unbound.example.org")
    request.attributes.context_extensions["abuse-policy"] = "demo/shop"
    request.attributes.request.http.headers["x-abuse-subject"] = "admin"
    response = await _check(channel, request)
    ok = response.ok_response
    assert "x-abuse-subject" in ok.headers_to_remove
    assert {h.header.key: h.header.value for h in ok.headers}["x-abuse-policy"] == "demo/shop"


async def test_decision_metadata_goes_where_the_access_log_needs_it(
    channel: grpc.aio.Channel,
) -> None:
    plain = await _check(channel, _request("/products"))
    assert plain.WhichOneof("http_response") == "ok_response"
    assert not plain.HasField("dynamic_metadata")  # nothing reads it: Envoy is spared
    assert list(plain.ok_response.headers_to_remove) == []  # nothing forged to remove
    counted = await _check(channel, _request("/login", host="login.example.com"))
    assert counted.dynamic_metadata.fields["policy"].string_value == "demo/logins"
    assert counted.dynamic_metadata.fields["client_ip"].string_value == "198.51.100.1"
    denied = await _check(channel, _request("/.env"))
    assert denied.dynamic_metadata.fields["reason"].string_value == "honeypot"
    server, ch = await _serve("always")
    try:
        plain = await _check(ch, _request("/products"))
        assert plain.dynamic_metadata.fields["decision"].string_value == "allow"
    finally:
        await ch.close()
        await server.stop(0)
