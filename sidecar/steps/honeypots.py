"""Honeypot paths: a hit denies 403 ``honeypot`` and blocks the caller on the policy.

The block covers the client IP and, when the request carries a credential the
identity step can read, the subject too, for ``blockFor``. The blocks are
enforced by ``ActiveBlocksStep`` on every later request to the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sidecar.compiled.paths import PathSet
from sidecar.model.durations import parse_duration
from sidecar.model.policy import HoneypotSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.stores import keys
from sidecar.stores.base import BlockSet, Operation, OpResult

SubjectPeek = Callable[[RequestContext], str | None]

HONEYPOT_VALUE = "honeypot"


class HoneypotStep:
    __slots__ = ("_block_ms", "_deny", "_paths", "_peek_subject", "_policy", "name")

    def __init__(
        self, policy_id: str, paths: PathSet, block_ms: int, peek_subject: SubjectPeek | None
    ) -> None:
        self.name = "honeypot"
        self._policy = policy_id
        self._paths = paths
        self._block_ms = block_ms
        self._peek_subject = peek_subject
        self._deny = Deny(Reason.HONEYPOT, "honeypots", "This resource is not available.")

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        if not self._paths.matches(ctx.path):
            return None
        block_keys = [keys.block_key(self._policy, "ip", ctx.client_ip)]
        subject = self._peek_subject(ctx) if self._peek_subject is not None else None
        if subject:
            block_keys.append(keys.block_key(self._policy, "subject", subject))
        ops.append(BlockSet(tuple(block_keys), self._block_ms, HONEYPOT_VALUE))
        ctx.report(
            "honeypot",
            "deny",
            path=ctx.path,
            blocked_ip=ctx.client_ip,
            blocked_subject=subject,
            block_seconds=self._block_ms // 1000,
        )
        return self._deny

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        return None


def build_honeypot_step(
    policy_id: str, spec: HoneypotSpec, peek_subject: SubjectPeek | None
) -> HoneypotStep | None:
    if not spec.paths:
        return None
    paths = PathSet.compile(spec.paths, empty_matches_all=False)
    return HoneypotStep(policy_id, paths, parse_duration(spec.block_for) * 1000, peek_subject)
