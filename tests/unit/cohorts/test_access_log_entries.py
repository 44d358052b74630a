"""Access-log entries → response-cohort counts (the receiver without the gRPC transport)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from sidecar.cohorts.als import AccessLogReceiver
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.pipeline.engine import Engine
from sidecar.stores.memory import MemoryStore
from sidecar.stores.redis import open_redis_store
from tests.harness.ports import free_port
from tests.unit.cohorts.support import (
    RecordingSink,
    access_log_entry,
    access_log_message,
    compile_registry,
    request,
)

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: login, namespace: shop}}
spec:
  hosts: [api.example.com]
  failureMode: {failure_mode}
  cohorts:
    - name: stuffers
      match: {{methods: [POST], paths: [/api/auth/login]}}
      responseCodes: [401]
      by: {by}
      threshold: 3
      period: 10m
      action: flag
      for: 1h
      notify: [hook]
  notifications:
    - {{name: hook, webhook: {{url: "http://127.0.0.1:9/hook"}}}}
"""


def entries_total(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "abuse_sidecar_access_log_entries_total", {"outcome": outcome}
    )
    return value or 0.0


def setup(
    by: str = "ip", failure_mode: str = "open", store: object | None = None
) -> tuple[PolicyRegistry, AccessLogReceiver, MemoryStore, RecordingSink]:
    sink = RecordingSink()
    registry = compile_registry(POLICY.format(by=by, failure_mode=failure_mode), sink)
    memory = MemoryStore()
    receiver = AccessLogReceiver(lambda: registry.current, store or memory, memory)  # type: ignore[arg-type]
    return registry, receiver, memory, sink


async def flagged(registry: PolicyRegistry, store: MemoryStore, ip: str, **headers: str) -> bool:
    policy = registry.current.index.by_id["shop/login"]
    decision = await Engine(store, MemoryStore()).decide(
        request("GET", "/", ip=ip, headers=headers), policy
    )
    return "stuffers" in decision.flags


async def test_failed_logins_from_one_ip_make_it_a_member_once() -> None:
    registry, receiver, store, sink = setup()
    meta = {"policy": "shop/login", "client_ip": "198.51.100.20", "decision": "allow"}
    login = "/api/auth/login?next=%2Fhome"
    await receiver.process(
        access_log_message(
            [
                access_log_entry(401, login, metadata=meta),
                access_log_entry(200, login, metadata=meta),  # a success: not counted
                access_log_entry(401, "/api/other", metadata=meta),  # another route
                access_log_entry(401, login, method="GET", metadata=meta),  # another method
                access_log_entry(401, login, metadata=meta),
            ]
        )
    )
    assert not await flagged(registry, store, "198.51.100.20")
    await receiver.process(
        access_log_message([access_log_entry(401, login, metadata=meta, user_agent="bot/1")])
    )
    assert await flagged(registry, store, "198.51.100.20")
    assert not await flagged(registry, store, "203.0.113.7")  # the downstream address is a proxy
    ((event, _),) = sink.events
    body = event.as_json()
    assert body["key"] == "ip=198.51.100.20"
    assert body["source"] == "responses"
    assert body["sample"] == {
        "method": "POST",
        "path": "/api/auth/login",
        "host": "api.example.com",
        "clientIp": "198.51.100.20",
        "userAgent": "bot/1",
        "status": 401,
    }
    await receiver.process(access_log_message([access_log_entry(401, login, metadata=meta)] * 3))
    assert len(sink.events) == 1


async def test_without_metadata_the_host_binds_and_the_downstream_address_counts() -> None:
    registry, receiver, store, _ = setup()
    entries = [access_log_entry(401, "/api/auth/login", authority="API.example.com:443")] * 3
    await receiver.process(access_log_message(entries))
    assert await flagged(registry, store, "203.0.113.7")


async def test_subject_and_logged_headers_key_like_the_check_did() -> None:
    registry, receiver, store, _ = setup(by="subject")
    meta = {"policy": "shop/login", "client_ip": "198.51.100.1", "subject": "alice"}
    await receiver.process(
        access_log_message([access_log_entry(401, "/api/auth/login", metadata=meta)] * 3)
    )
    assert [m.key for m in await store.members("shop/login")] == ["subject=alice"]

    registry, receiver, store, _ = setup(by="header:x-login-account")
    entries = [
        access_log_entry(
            401, "/api/auth/login", remote=f"192.0.2.{i}", headers={"x-login-account": "bob"}
        )
        for i in range(3)
    ]
    await receiver.process(access_log_message(entries))
    assert await flagged(registry, store, "192.0.2.99", **{"x-login-account": "bob"})
    assert not await flagged(registry, store, "192.0.2.99", **{"x-login-account": "carol"})


async def test_unattributable_and_unfinished_entries_are_ignored() -> None:
    _, receiver, store, _ = setup()
    before = entries_total("ignored")
    no_response = access_log_entry(0, "/api/auth/login")
    intermediate = access_log_entry(401, "/api/auth/login")
    intermediate.common_properties.intermediate_log_entry = True
    unknown_host = access_log_entry(401, "/api/auth/login", authority="elsewhere.example.org")
    await receiver.process(access_log_message([no_response, intermediate, unknown_host]))
    assert entries_total("ignored") - before == 3
    assert await store.members("shop/login") == ()


async def test_store_down_drops_under_failure_mode_closed() -> None:
    down = open_redis_store(f"redis://127.0.0.1:{free_port()}", connect_timeout_ms=100)
    try:
        _, receiver, memory, _ = setup(failure_mode="closed", store=down)
        before = entries_total("dropped")
        await receiver.process(access_log_message([access_log_entry(401, "/api/auth/login")] * 3))
        assert entries_total("dropped") - before == 3
        assert await memory.members("shop/login") == ()
    finally:
        await down.close()


async def test_store_down_counts_locally_under_failure_mode_open() -> None:
    down = open_redis_store(f"redis://127.0.0.1:{free_port()}", connect_timeout_ms=100)
    try:
        _, receiver, memory, sink = setup(failure_mode="open", store=down)
        await receiver.process(access_log_message([access_log_entry(401, "/api/auth/login")] * 3))
        assert [m.key for m in await memory.members("shop/login")] == ["ip=203.0.113.7"]
        assert len(sink.events) == 1
    finally:
        await down.close()
