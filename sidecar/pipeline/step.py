"""The Step protocol: one evaluator per concern.

A Check runs in two phases so that it costs at most one store round trip:

1. *local*: the engine calls ``evaluate`` on each step in contract order. A step
   decides what it can without shared state (IP reputation, signatures, GraphQL
   limits), records facts on the context (subject, risk, ...) and appends the
   store operations it needs (``stores/base.py``) to ``ops``.
2. *store*: the engine executes every operation in one ``Store.execute`` call and
   then calls ``settle`` on each step, in the same order, with the results of the
   operations that step appended.

The first Deny in contract order wins, whichever phase produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny
from sidecar.stores.base import Operation, OpResult


class Step(Protocol):
    name: str

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        """Local phase: append store operations to ``ops``; return a Deny decided locally."""

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        """Store phase: interpret the results of the operations this step appended
        (``None`` for an operation the store did not run because an earlier one denied)."""


class LocalStep:
    """Base for steps that never use the store."""

    __slots__ = ()
    name: str = "local"

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        return None
