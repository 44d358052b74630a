"""What an analysis found: the measurements, and the problem if the request is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProblemKind = Literal["invalid", "too_complex"]

# Measurements saturate here so that every figure stays exact in JSON and in a
# protobuf Struct (doubles), whatever a fragment-doubling document multiplies to.
SATURATION = 2**53 - 1


def saturate(value: int) -> int:
    return value if value < SATURATION else SATURATION


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a request is refused, in terms the client and the operator can act on.

    ``limit`` is the ``spec.graphql`` setting that refused (``maxDepth``, ...), or
    ``""`` for a request that is not valid GraphQL; ``observed``/``maximum`` are the
    measured value and the setting, when the problem is a limit.
    """

    kind: ProblemKind
    limit: str
    message: str
    measure: str = ""  # name of the measured quantity in the explain output (depth, cost, ...)
    observed: int = 0
    maximum: int = 0
    # The whole operation was measured, so the cost is known (and worth telling).
    measured: bool = False


@dataclass(frozen=True, slots=True)
class Measurements:
    """The explain output of one operation (or of a whole batch, see ``combine``)."""

    depth: int = 0
    aliases: int = 0
    root_fields: int = 0
    directives: int = 0
    tokens: int = 0
    cost: int = 0
    github_nodes: int = 0
    github_points: int = 0
    max_list_size: int = 0  # largest first/last/limit the client asked for
    introspection: bool = False
    operations: int = 1


NO_MEASUREMENTS = Measurements(operations=0)


@dataclass(frozen=True, slots=True)
class Analysis:
    measurements: Measurements
    problem: Problem | None = None

    @property
    def allowed(self) -> bool:
        return self.problem is None


def invalid(message: str, measurements: Measurements = NO_MEASUREMENTS) -> Analysis:
    return Analysis(measurements, Problem("invalid", "", message))
