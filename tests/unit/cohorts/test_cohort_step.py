"""Request cohorts through the real engine and the in-process store."""

from __future__ import annotations

from sidecar.pipeline.engine import Engine
from sidecar.pipeline.verdict import Reason
from sidecar.stores.base import OpResult, StorePlan
from sidecar.stores.memory import MemoryStore
from tests.unit.cohorts.support import ManualClock, RecordingSink, compile_one, request

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: reviews, namespace: shop}}
spec:
  mode: {mode}
  cohorts:
    - name: review-spammers
      match: {{methods: [POST], paths: [/reviews, /reviews/**]}}
      by: {by}
      threshold: 3
      period: 1m
      action: {action}
      for: {member_for}
      notify: [security-team]
    - name: failed-logins
      match: {{paths: [/login]}}
      responseCodes: [401]
      by: ip
      threshold: 2
      period: 1m
  notifications:
    - name: security-team
      webhook: {{url: "https://hooks.example.com/abuse", secret: s3cret}}
      email: {{to: [secops@example.com]}}
"""


def policy_text(
    action: str = "flag", by: str = "ip", mode: str = "enforce", member_for: str = "10m"
) -> str:
    return POLICY.format(action=action, by=by, mode=mode, member_for=member_for)


class CountingStore(MemoryStore):
    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.plans: list[StorePlan] = []

    async def execute(self, plan: StorePlan) -> tuple[OpResult | None, ...]:
        self.plans.append(plan)
        return await super().execute(plan)


def engine(clock: ManualClock) -> tuple[Engine, CountingStore]:
    store = CountingStore(clock)
    return Engine(store, MemoryStore(clock=clock)), store


async def test_flag_cohort_marks_from_the_request_that_reaches_the_threshold() -> None:
    clock = ManualClock()
    sink = RecordingSink()
    policy = compile_one(policy_text("flag"), sink)
    eng, _ = engine(clock)
    flags = []
    for _ in range(5):
        decision = await eng.decide(request("POST", "/reviews"), policy)
        assert decision.allowed
        flags.append(decision.flags)
    assert flags == [(), (), ("review-spammers",), ("review-spammers",), ("review-spammers",)]
    assert len(sink.events) == 1, "exactly one notification per membership"
    # Other clients are not members.
    other = await eng.decide(request("POST", "/reviews", ip="203.0.113.9"), policy)
    assert other.flags == ()


async def test_block_cohort_denies_every_route_of_the_policy() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("block"))
    eng, _ = engine(clock)
    for _ in range(3):
        assert (await eng.decide(request("POST", "/reviews/42"), policy)).allowed
    decision = await eng.decide(request("GET", "/anything/else"), policy)
    assert decision.deny is not None
    assert decision.deny.reason is Reason.COHORT_BLOCKED
    assert decision.deny.rule == "review-spammers"


async def test_throttle_cohort_answers_429_with_retry_after_of_the_membership_left() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("throttle", member_for="90s"))
    eng, _ = engine(clock)
    for _ in range(3):
        await eng.decide(request("POST", "/reviews"), policy)
    clock.advance(30)
    decision = await eng.decide(request("GET", "/"), policy)
    assert decision.deny is not None
    assert decision.deny.reason is Reason.COHORT_THROTTLED
    assert dict(decision.deny.headers)["retry-after"] == "60"


async def test_membership_ends_after_for() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("block", member_for="30s"))
    eng, _ = engine(clock)
    for _ in range(3):
        await eng.decide(request("POST", "/reviews"), policy)
    clock.advance(29)
    assert not (await eng.decide(request("GET", "/"), policy)).allowed
    # Past ``for`` and past two periods: neither membership nor counts remain.
    clock.advance(121)
    assert (await eng.decide(request("GET", "/"), policy)).allowed
    assert (await eng.decide(request("POST", "/reviews"), policy)).allowed


async def test_a_key_can_join_again_after_its_membership_expired_and_is_notified_again() -> None:
    clock = ManualClock()
    sink = RecordingSink()
    policy = compile_one(policy_text("flag", member_for="30s"), sink)
    eng, _ = engine(clock)
    for _ in range(3):
        await eng.decide(request("POST", "/reviews"), policy)
    clock.advance(200)
    for _ in range(3):
        await eng.decide(request("POST", "/reviews"), policy)
    assert len(sink.events) == 2
    assert sink.events[0][0].id != sink.events[1][0].id


async def test_only_matching_requests_with_a_key_are_counted() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("block", by="subject"))
    eng, store = engine(clock)
    # Anonymous callers have no subject: nothing to count them under.
    for _ in range(5):
        ctx = request("POST", "/reviews")
        assert (await eng.decide(ctx, policy)).allowed
        assert "cohorts" not in [r.step for r in ctx.reports]
    # Wrong method or path: not counted.
    for method, path in (("GET", "/reviews"), ("POST", "/reviewsx"), ("POST", "/login")):
        ctx = request(method, path)
        await eng.decide(ctx, policy)
        assert "cohorts" not in [r.step for r in ctx.reports]
    assert all(not plan.operations or len(plan.operations) == 1 for plan in store.plans)


async def test_one_store_call_per_check_covers_blocks_and_counts() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("block"))
    eng, store = engine(clock)
    ctx = request("POST", "/reviews")
    await eng.decide(ctx, policy)
    assert len(store.plans) == 1
    kinds = [type(op).__name__ for op in store.plans[0].operations]
    assert kinds == ["ActiveCheck", "CohortCount"]


async def test_response_cohorts_are_not_counted_on_the_check_path() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("flag"))
    eng, store = engine(clock)
    for _ in range(5):
        assert (await eng.decide(request("POST", "/login"), policy)).flags == ()
    assert all(type(op).__name__ != "CohortCount" for plan in store.plans for op in plan.operations)


async def test_shadow_mode_records_the_would_be_block_and_allows() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("block", mode="shadow"))
    eng, _ = engine(clock)
    for _ in range(3):
        await eng.decide(request("POST", "/reviews"), policy)
    decision = await eng.decide(request("GET", "/"), policy)
    assert decision.allowed
    assert decision.shadow is not None
    assert decision.shadow.reason is Reason.COHORT_BLOCKED


async def test_notification_describes_the_membership_without_credentials() -> None:
    clock = ManualClock()
    sink = RecordingSink()
    policy = compile_one(policy_text("flag", by="header:authorization"), sink)
    eng, _ = engine(clock)
    headers = {"authorization": "Bearer very-secret-token", "user-agent": "curl/8"}
    for _ in range(3):
        ctx = request("POST", "/reviews", headers=headers)
        await eng.decide(ctx, policy)
    ((event, targets),) = sink.events
    body = event.as_json()
    assert body["policy"] == "shop/reviews"
    assert body["cohort"] == "review-spammers"
    assert body["key"].startswith("header:authorization=sha256:")
    assert "very-secret-token" not in repr(body)
    assert body["count"] == 3
    assert body["threshold"] == 3
    assert body["window"] == "1m"
    assert body["windowSeconds"] == 60
    assert body["for"] == "10m"
    assert body["firstSeen"] <= body["lastSeen"]
    assert body["sample"] == {
        "method": "POST",
        "path": "/reviews",
        "host": "api.example.com",
        "clientIp": "198.51.100.7",
        "userAgent": "curl/8",
    }
    assert [t.name for t in targets] == ["security-team"]
    assert targets[0].webhook_secret == "s3cret"
    assert "s3cret" not in repr(targets[0])
    assert targets[0].email_to == ("secops@example.com",)


async def test_explain_reports_counts_per_cohort() -> None:
    clock = ManualClock()
    policy = compile_one(policy_text("flag"))
    eng, _ = engine(clock)
    await eng.decide(request("POST", "/reviews"), policy)
    ctx = request("POST", "/reviews")
    await eng.decide(ctx, policy)
    (report,) = [r.as_dict() for r in ctx.reports if r.step == "cohorts"]
    assert report["counted"] == [
        {
            "cohort": "review-spammers",
            "key": "ip=198.51.100.7",
            "count": 2,
            "threshold": 3,
            "member": False,
            "joined": False,
        }
    ]
