"""Admin API over current members, the members gauge, and the notifier's bounded queue."""

from __future__ import annotations

from prometheus_client import REGISTRY

from sidecar.cohorts.events import NotificationTarget
from sidecar.cohorts.members import CohortMembers
from sidecar.cohorts.notify import Notifier
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text
from sidecar.pipeline.engine import Engine
from sidecar.stores.memory import MemoryStore
from tests.unit.cohorts.support import ManualClock, compile_registry, request
from tests.unit.cohorts.test_cohort_messages import event

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: reviews, namespace: shop}
spec:
  cohorts:
    - {name: spammers, match: {methods: [POST]}, by: ip, threshold: 2, period: 1m, action: block, for: 5m}
    - {name: quiet, match: {methods: [PUT]}, by: ip, threshold: 2, period: 1m}
"""


def gauge(policy: str, cohort: str) -> float | None:
    return REGISTRY.get_sample_value(
        "abuse_sidecar_cohort_members", {"policy": policy, "cohort": cohort}
    )


async def _two_members(store: MemoryStore) -> tuple[CohortMembers, Engine, PolicyRegistry]:
    registry = compile_registry(POLICY)
    policy = registry.current.index.by_id["shop/reviews"]
    eng = Engine(store, MemoryStore())
    for ip in ("198.51.100.1", "2001:db8::1"):
        for _ in range(2):
            await eng.decide(request("POST", "/r", ip=ip), policy)
    return CohortMembers(store, lambda: registry.current), eng, registry


async def test_list_members_with_time_left() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    members, _, _ = await _two_members(store)
    clock.advance(60)
    status, body = await members.list_members({"policy": ["shop/reviews"]})
    assert status == 200
    assert body["policy"] == "shop/reviews"
    assert [(m["cohort"], m["key"], m["ttlSeconds"]) for m in body["members"]] == [
        ("spammers", "ip=198.51.100.1", 240.0),
        ("spammers", "ip=2001:db8::1", 240.0),
    ]
    status, body = await members.list_members({"policy": ["shop/reviews"], "cohort": ["quiet"]})
    assert (status, body["members"]) == (200, [])
    status, body = await members.list_members({})
    assert status == 400
    assert "policy" in body["error"]


async def test_delete_member_ends_the_block_and_forgets_the_count() -> None:
    store = MemoryStore()
    members, eng, _ = await _two_members(store)
    policy = compile_registry(POLICY).current.index.by_id["shop/reviews"]
    assert not (await eng.decide(request("GET", "/", ip="2001:db8::1"), policy)).allowed
    query = {"policy": ["shop/reviews"], "cohort": ["spammers"], "key": ["ip=2001:db8::1"]}
    status, body = await members.remove_member(query)
    assert (status, body["removed"]) == (200, True)
    assert (await eng.decide(request("GET", "/", ip="2001:db8::1"), policy)).allowed
    # Its count is gone too: one more event does not make it a member again.
    assert (await eng.decide(request("POST", "/", ip="2001:db8::1"), policy)).allowed
    assert (await eng.decide(request("GET", "/", ip="2001:db8::1"), policy)).allowed
    status, body = await members.remove_member(query)
    assert status == 404
    assert body["removed"] is False
    status, _ = await members.remove_member({"policy": ["shop/reviews"]})
    assert status == 400


async def test_gauge_counts_members_per_cohort_and_drops_unloaded_policies() -> None:
    store = MemoryStore()
    members, _, registry = await _two_members(store)
    await members.refresh()
    assert gauge("shop/reviews", "spammers") == 2
    assert gauge("shop/reviews", "quiet") == 0
    # The policy file now defines another policy: shop/reviews is gone.
    registry.replace_source(
        "test.yaml", load_text(POLICY.replace("name: reviews", "name: other"), "t")
    )
    await members.refresh()
    assert gauge("shop/reviews", "spammers") is None
    assert gauge("shop/other", "spammers") == 0


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    def dropped() -> float:
        value = REGISTRY.get_sample_value(
            "abuse_sidecar_notifications_total", {"channel": "webhook", "outcome": "dropped"}
        )
        return value or 0.0

    notifier = Notifier(queue_size=2)  # not started: nothing drains the queue
    target = NotificationTarget("hook", webhook_url="http://127.0.0.1:9/")
    before = dropped()
    for _ in range(5):
        notifier.submit(event(), [target])
    assert notifier.pending == 2
    assert dropped() - before == 3
