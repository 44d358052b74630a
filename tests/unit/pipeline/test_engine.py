"""The engine: contract order, shadow mode, honeypot blocks, one store call."""

from __future__ import annotations

from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.engine import Engine
from sidecar.pipeline.verdict import Reason
from sidecar.stores.base import StorePlan
from sidecar.stores.memory import MemoryStore

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: shop, namespace: demo}}
spec:
  mode: {mode}
  clientIP: {{xffTrustedHops: 1}}
  honeypots: {{paths: [/.env, /admin/**], blockFor: 1h}}
"""


class CountingStore(MemoryStore):
    """The real memory store, counting how many times the engine calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def execute(self, plan: StorePlan) -> tuple[object, ...]:  # type: ignore[override]
        self.calls += 1
        return await super().execute(plan)


def _policy(mode: str = "enforce") -> CompiledPolicy:
    registry = PolicyRegistry(Resources())
    registry.replace_source("t", load_text(POLICY.format(mode=mode), "t.yaml"))
    return registry.current.index.by_id["demo/shop"]


def _ctx(path: str, ip: str = "198.51.100.7", xff: str | None = None) -> RequestContext:
    headers = {"x-forwarded-for": xff} if xff else {}
    return RequestContext(
        method="GET",
        path=path,
        raw_path=path,
        query="",
        host="api.example.com",
        headers=headers,
        body=b"",
        source_ip="10.0.0.1" if xff else ip,
        explain=True,
    )


async def test_honeypot_denies_and_blocks_the_client_on_every_path() -> None:
    store = CountingStore()
    engine = Engine(store, MemoryStore())
    policy = _policy()
    hit = await engine.decide(_ctx("/admin/users"), policy)
    assert hit.deny is not None
    assert hit.deny.reason is Reason.HONEYPOT
    assert hit.deny.rule == "honeypots"
    later = await engine.decide(_ctx("/products"), policy)
    assert later.deny is not None
    assert later.deny.reason is Reason.HONEYPOT
    assert ("retry-after", "3600") in later.deny.headers
    other = await engine.decide(_ctx("/products", ip="198.51.100.8"), policy)
    assert other.allowed
    assert other.deny is None
    # One store round trip per Check, however many steps there are.
    assert store.calls == 3


async def test_unblock_lifts_the_block() -> None:
    store = MemoryStore()
    engine = Engine(store, MemoryStore())
    policy = _policy()
    await engine.decide(_ctx("/.env"), policy)
    assert await store.unblock("demo/shop", "ip", "198.51.100.7") == 1
    assert (await engine.decide(_ctx("/products"), policy)).allowed


async def test_shadow_mode_never_denies_but_reports_the_would_be_reason() -> None:
    engine = Engine(MemoryStore(), MemoryStore())
    policy = _policy("shadow")
    decision = await engine.decide(_ctx("/.env"), policy)
    assert decision.allowed
    assert decision.deny is None
    assert decision.shadow is not None
    assert decision.shadow.reason is Reason.HONEYPOT
    again = await engine.decide(_ctx("/products"), policy)
    assert again.allowed
    assert again.shadow is not None


async def test_client_ip_comes_from_the_trusted_xff_hop() -> None:
    engine = Engine(MemoryStore(), MemoryStore())
    policy = _policy()
    ctx = _ctx("/.env", xff="6.6.6.6, 203.0.113.9")
    await engine.decide(ctx, policy)
    assert ctx.client_ip == "203.0.113.9"
    # The spoofed left-hand entry was not blocked; the real client was.
    assert (await engine.decide(_ctx("/x", xff="1.1.1.1, 6.6.6.6"), policy)).allowed
    assert not (await engine.decide(_ctx("/x", xff="203.0.113.9"), policy)).allowed


async def test_explain_reports_each_step() -> None:
    engine = Engine(MemoryStore(), MemoryStore())
    ctx = _ctx("/.env")
    await engine.decide(ctx, _policy())
    steps = [r.step for r in ctx.reports]
    assert "honeypot" in steps
    honeypot = next(r for r in ctx.reports if r.step == "honeypot")
    assert honeypot.verdict == "deny"
    assert honeypot.details["block_seconds"] == 3600
