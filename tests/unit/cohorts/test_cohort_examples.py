"""The example policies in manifests/examples do what their comments say."""

from __future__ import annotations

from pathlib import Path

from sidecar.cohorts.als import AccessLogReceiver
from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_file
from sidecar.pipeline.engine import Engine
from sidecar.pipeline.verdict import Reason
from sidecar.stores.memory import MemoryStore
from tests.unit.cohorts.support import access_log_entry, access_log_message, request

EXAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "examples"


def load(name: str) -> tuple[PolicyRegistry, CompiledPolicy]:
    registry = PolicyRegistry(Resources())
    registry.replace_source(name, load_file(EXAMPLES / name))
    assert [s.error for s in registry.current.states] == [None]
    (policy,) = registry.current.index.by_id.values()
    return registry, policy


async def test_credential_stuffing_blocks_one_ip_failing_across_accounts() -> None:
    registry, policy = load("credential-stuffing.yaml")
    store = MemoryStore()
    receiver = AccessLogReceiver(lambda: registry.current, store, MemoryStore())
    failures = [
        access_log_entry(
            401,
            "/api/auth/login",
            authority="login.shop.example.com",
            metadata={"policy": "shop/credential-stuffing", "client_ip": "198.51.100.66"},
            headers={"x-login-account": f"user{n}"},
        )
        for n in range(20)
    ]
    await receiver.process(access_log_message(failures[:19]))
    engine = Engine(store, MemoryStore())
    ctx = request(
        "GET", "/api/products", ip="10.0.0.2", headers={"x-forwarded-for": "198.51.100.66"}
    )
    assert (await engine.decide(ctx, policy)).allowed
    await receiver.process(access_log_message(failures[19:]))
    ctx = request(
        "GET", "/api/products", ip="10.0.0.2", headers={"x-forwarded-for": "198.51.100.66"}
    )
    decision = await engine.decide(ctx, policy)
    assert decision.deny is not None
    assert decision.deny.reason is Reason.COHORT_BLOCKED
    assert decision.deny.rule == "stuffing-ips"


async def test_brute_force_flags_one_account_failing_from_many_ips() -> None:
    registry, policy = load("brute-force.yaml")
    store = MemoryStore()
    receiver = AccessLogReceiver(lambda: registry.current, store, MemoryStore())
    failures = [
        access_log_entry(
            401,
            "/api/auth/login",
            authority="accounts.shop.example.com",
            metadata={"policy": "shop/brute-force", "client_ip": f"203.0.113.{n}"},
            headers={"x-login-account": "alice"},
        )
        for n in range(10)
    ]
    await receiver.process(access_log_message(failures))
    engine = Engine(store, MemoryStore())
    for account, flags in (("alice", ("account-under-attack",)), ("bob", ())):
        ctx = request(
            "POST", "/api/auth/login", ip="192.0.2.1", headers={"x-login-account": account}
        )
        decision = await engine.decide(ctx, policy)
        assert decision.allowed
        assert decision.flags == flags
