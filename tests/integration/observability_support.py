"""What the observability tests share: a policy with every kind of step, the
secrets a client sends, CheckRequests carrying them, and a gRPC Check client."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

API_KEY = "sk_live_7Hq2ZpX9vLmN4rT8wB3cY6dF"
WRONG_API_KEY = "sk_live_WRONGWRONGwrongwrong1234"
BEARER_JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJtYWxsb3J5IiwiYXVkIjoicmV2aWV3cyJ9."
    "c2lnbmF0dXJlLXRoYXQtd2lsbC1uZXZlci12ZXJpZnktMTIzNDU2"
)
BASIC_CREDENTIALS = "YWxpY2U6aHVudGVyMi1zM2NyM3Q="
SESSION_COOKIE = "sess_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CSRF_COOKIE = "csrf_TOKEN_0a1b2c3d4e5f6a7b8c9d"
BODY_SECRET = "body_password_Qw3rTy!uIoP"
QUERY_SECRET = "qs_token_ZXCVBNMasdfghjkl"

SECRETS = (
    API_KEY,
    WRONG_API_KEY,
    BEARER_JWT,
    BEARER_JWT.split(".")[2],
    BASIC_CREDENTIALS,
    SESSION_COOKIE,
    CSRF_COOKIE,
    BODY_SECRET,
    QUERY_SECRET,
)
"""Every credential or secret the tests send; none may ever show up in a log or a span."""

POLICY_ID = "obs/api"
HOST = "api.example.com"
SUBJECT = "alice"

POLICY = f"""\
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: api, namespace: obs}}
spec:
  hosts: [{HOST}]
  honeypots: {{paths: [/.env], blockFor: 1m}}
  ipReputation: {{denyCIDRs: [203.0.113.0/24]}}
  identity:
    required: true
    apiKey:
      in: header
      name: x-api-key
      keys:
        - {{id: k1, sha256: "{hashlib.sha256(API_KEY.encode()).hexdigest()}", subject: {SUBJECT}, plan: gold}}
  rateLimits:
    - {{name: per-subject, by: [subject], limit: 100000, period: 1m}}
"""
STEPS_OF_AN_ALLOW = ("active_blocks", "honeypot", "ip_reputation", "identity", "rate_limits")
"""Every step of POLICY evaluates an allowed request (active blocks are built last)."""


def write_policy(directory: Path) -> Path:
    path = directory / "policy.yaml"
    path.write_text(POLICY)
    return path


def check_request(
    *,
    path: str = "/api/items",
    method: str = "GET",
    source_ip: str = "198.51.100.7",
    headers: Mapping[str, str] | None = None,
    body: str = "",
) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = method, path, HOST
    http.headers.update({":authority": HOST, ":method": method, ":path": path, **(headers or {})})
    if body:
        http.body = body
    request.attributes.source.address.socket_address.address = source_ip
    return request


def secret_headers(api_key: str = API_KEY) -> dict[str, str]:
    """A request carrying every kind of credential at once."""
    return {
        "x-api-key": api_key,
        "authorization": f"Basic {BASIC_CREDENTIALS}",
        "cookie": f"session={SESSION_COOKIE}; csrftoken={CSRF_COOKIE}",
        "x-auth-token": BEARER_JWT,
    }


class CheckClient:
    """Envoy's side of ext_authz: Check over a real gRPC channel."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = external_auth_pb2_grpc.AuthorizationStub(self._channel)

    async def check(
        self, request: external_auth_pb2.CheckRequest
    ) -> external_auth_pb2.CheckResponse:
        response: external_auth_pb2.CheckResponse = await self._stub.Check(request, timeout=10)
        return response

    async def close(self) -> None:
        await self._channel.close()


def status_of(response: external_auth_pb2.CheckResponse) -> int:
    """The HTTP status Envoy would answer with (200 when allowed)."""
    if response.HasField("denied_response"):
        return int(response.denied_response.status.code)
    return 200
