"""The Access Log Service over real gRPC, beside Check on the same server.

Entries are built the way Envoy builds them: the dynamic metadata of each entry
is the ``dynamic_metadata`` of the CheckResponse the same server gave for that
request, so attribution (policy, client IP behind a trusted proxy) is exercised
end to end, minus Envoy itself (see tests/e2e for that).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client import REGISTRY

from sidecar.cohorts.als import AccessLogReceiver
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text
from sidecar.pipeline.engine import Engine
from sidecar.server.authz import Authorizer
from sidecar.server.grpc_server import GrpcServer
from sidecar.stores.base import Store
from sidecar.stores.memory import MemoryStore
from sidecar.stores.redis import open_redis_store
from tests.harness.ports import free_port
from tests.unit.cohorts.support import access_log_entry, access_log_message

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: files, namespace: shop}}
spec:
  hosts: [api.example.com]
  failureMode: {failure_mode}
  clientIP: {{xffTrustedHops: 1}}
  cohorts:
    - name: forbidden-scanners
      match: {{paths: [/private/**]}}
      responseCodes: [403]
      by: ip
      threshold: 3
      period: 10m
      action: flag
      for: 1h
"""
PROXY = "10.0.0.1"
CLIENT = "198.51.100.50"


@dataclass
class Sidecar:
    channel: grpc.aio.Channel
    store: MemoryStore

    async def check(self, path: str, client: str = CLIENT) -> external_auth_pb2.CheckResponse:
        request = external_auth_pb2.CheckRequest()
        http = request.attributes.request.http
        http.method = "GET"
        http.path = path
        http.host = "api.example.com"
        http.headers["x-forwarded-for"] = client
        request.attributes.source.address.socket_address.address = PROXY
        stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        return await stub.Check(request, timeout=5)

    async def logged(self, path: str, status: int) -> HTTPAccessLogEntry:
        """What Envoy logs for a request whose Check we just made and the upstream answered."""
        response = await self.check(path)
        entry = access_log_entry(status, path, method="GET", remote=PROXY)
        namespace = entry.common_properties.metadata.filter_metadata["envoy.filters.http.ext_authz"]
        namespace.CopyFrom(response.dynamic_metadata)
        return entry

    async def flags(self, client: str = CLIENT) -> str:
        response = await self.check("/public", client)
        for option in response.ok_response.headers:
            if option.header.key == "x-abuse-flags":
                return str(option.header.value)
        return ""

    async def stream(self, messages: AsyncIterator[als_pb2.StreamAccessLogsMessage]) -> None:
        stub = als_pb2_grpc.AccessLogServiceStub(self.channel)
        await stub.StreamAccessLogs(messages, timeout=20)


@pytest.fixture
async def sidecar_factory() -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    servers: list[GrpcServer] = []
    channels: list[grpc.aio.Channel] = []

    async def start(failure_mode: str = "open", store: Store | None = None) -> Sidecar:
        registry = PolicyRegistry(Resources())
        registry.replace_source("t", load_text(POLICY.format(failure_mode=failure_mode), "t.yaml"))
        memory = MemoryStore()
        receiver = AccessLogReceiver(lambda: registry.current, store or memory, memory)
        authorizer = Authorizer(registry, Engine(memory, MemoryStore()))
        server = GrpcServer(authorizer, "127.0.0.1:0", extra_services=[receiver.register])
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        return Sidecar(channel, memory)

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached while the stream stayed open")
        await asyncio.sleep(0.02)


async def test_responses_flag_the_client_while_the_stream_stays_open(
    sidecar_factory: Callable[..., Awaitable[Sidecar]],
) -> None:
    sidecar = await sidecar_factory()
    assert await sidecar.flags() == ""
    first = [
        await sidecar.logged("/private/a", 403),
        await sidecar.logged("/private/b", 200),  # allowed by the upstream: not counted
        await sidecar.logged("/public", 403),  # outside the cohort's match
        await sidecar.logged("/private/c", 403),
    ]
    third = await sidecar.logged("/private/d", 403)
    seen_flag_mid_stream = asyncio.Event()

    async def envoy() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
        yield access_log_message(first)
        # Two 403s so far: not yet a member.
        await asyncio.sleep(0.2)
        assert await sidecar.flags() == ""
        yield access_log_message([third])

        async def flagged() -> bool:
            return await sidecar.flags() == "forbidden-scanners"

        await _wait_for(flagged)
        seen_flag_mid_stream.set()

    await sidecar.stream(envoy())
    assert seen_flag_mid_stream.is_set()
    # Attribution used the client behind the proxy, not the proxy.
    assert await sidecar.flags(client="203.0.113.99") == ""
    assert [m.key for m in await sidecar.store.members("shop/files")] == [f"ip={CLIENT}"]


async def test_odd_messages_do_not_end_the_stream(
    sidecar_factory: Callable[..., Awaitable[Sidecar]],
) -> None:
    sidecar = await sidecar_factory()
    tcp_only = als_pb2.StreamAccessLogsMessage()
    tcp_only.tcp_logs.log_entry.add()
    ghost = access_log_entry(403, "/private/x", authority="unknown.example.org")
    ghost.common_properties.metadata.filter_metadata["envoy.filters.http.ext_authz"].update(
        {"policy": "ghost/policy", "client_ip": "not an ip", "risk": 5}
    )
    empty = HTTPAccessLogEntry()
    valid = [await sidecar.logged("/private/y", 403) for _ in range(3)]

    async def envoy() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
        yield tcp_only
        yield access_log_message([ghost, empty])
        yield als_pb2.StreamAccessLogsMessage()
        yield access_log_message(valid)

    await sidecar.stream(envoy())
    assert await sidecar.flags() == "forbidden-scanners"


async def test_a_failing_store_under_failure_mode_closed_drops_counts_not_the_stream(
    sidecar_factory: Callable[..., Awaitable[Sidecar]],
) -> None:
    down = open_redis_store(f"redis://127.0.0.1:{free_port()}", connect_timeout_ms=100)
    try:
        sidecar = await sidecar_factory(failure_mode="closed", store=down)
        before = REGISTRY.get_sample_value(
            "abuse_sidecar_access_log_entries_total", {"outcome": "dropped"}
        )
        entries = [await sidecar.logged("/private/z", 403) for _ in range(4)]

        async def envoy() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
            for entry in entries:
                yield access_log_message([entry])

        await sidecar.stream(envoy())
        after = REGISTRY.get_sample_value(
            "abuse_sidecar_access_log_entries_total", {"outcome": "dropped"}
        )
        assert (after or 0) - (before or 0) == 4
        assert await sidecar.flags() == ""
    finally:
        await down.close()
