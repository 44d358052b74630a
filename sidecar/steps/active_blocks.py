"""Active blocks: honeypot blocks and cohort memberships, checked first.

One ActiveCheck operation looks up every key that can hold a block or a
membership for this caller. It is *settled* first (contract order) but *built*
last by the engine, because its keys need the subject that identity establishes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.compiled.dimensions import CompiledKey
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.stores import keys
from sidecar.stores.base import ActiveCheck, ActiveResult, Operation, OpResult


@dataclass(frozen=True, slots=True)
class MembershipRule:
    """A cohort whose members are refused (block/throttle) or marked (flag)."""

    cohort: str
    key: CompiledKey
    action: str  # flag | throttle | block


class ActiveBlocksStep:
    __slots__ = ("_honeypot_blocks", "_memberships", "_policy", "name")

    def __init__(
        self, policy_id: str, honeypot_blocks: bool, memberships: tuple[MembershipRule, ...]
    ) -> None:
        self.name = "active_blocks"
        self._policy = policy_id
        self._honeypot_blocks = honeypot_blocks
        self._memberships = memberships

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        check_keys: list[str] = []
        denying: list[bool] = []
        if self._honeypot_blocks:
            check_keys.append(keys.block_key(self._policy, "ip", ctx.client_ip))
            denying.append(True)
            if ctx.subject:
                check_keys.append(keys.block_key(self._policy, "subject", ctx.subject))
                denying.append(True)
        for rule in self._memberships:
            value = rule.key.value(ctx)
            if value is None:
                continue
            check_keys.append(keys.member_key(self._policy, rule.cohort, value))
            denying.append(rule.action != "flag")
        if check_keys:
            ops.append(ActiveCheck(tuple(check_keys), tuple(denying)))
        return None

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        if not results or not isinstance(results[0], ActiveResult):
            ctx.report("active_blocks", "allow", checked=0)
            return None
        result = results[0]
        index = 0
        deny: Deny | None = None
        if self._honeypot_blocks:
            count = 2 if ctx.subject else 1
            for offset in range(count):
                if deny is None and result.values[index + offset] is not None:
                    deny = Deny(
                        Reason.HONEYPOT,
                        "honeypots",
                        "This client is blocked.",
                        headers=_retry_after(result.ttls_ms[index + offset]),
                    )
            index += count
        for rule in self._memberships:
            if rule.key.value(ctx) is None:
                continue
            present = result.values[index] is not None
            ttl_ms = result.ttls_ms[index]
            index += 1
            if not present:
                continue
            if rule.action == "flag":
                if rule.cohort not in ctx.flags:
                    ctx.flags.append(rule.cohort)
            elif deny is None and rule.action == "block":
                deny = Deny(Reason.COHORT_BLOCKED, rule.cohort, "This client is blocked.")
            elif deny is None:
                deny = Deny(
                    Reason.COHORT_THROTTLED,
                    rule.cohort,
                    "This client is throttled.",
                    headers=_retry_after(ttl_ms),
                )
        ctx.report(
            "active_blocks",
            "deny" if deny else "allow",
            reason=deny.reason.value if deny else None,
            rule=deny.rule if deny else None,
            flags=list(ctx.flags),
        )
        return deny


def _retry_after(ttl_ms: int) -> tuple[tuple[str, str], ...]:
    return (("retry-after", str(max(1, math.ceil(ttl_ms / 1000)))),)
