"""GraphQL limits and cost: refuse what is too expensive before any resolver runs.

Only requests whose normalised path matches ``spec.graphql.paths`` are looked
at. Refusals are 400s with a GraphQL-shaped body rendered from the Deny's
``detail`` and ``extensions``:

- ``graphql_invalid`` (``GRAPHQL_INVALID``): the request cannot be read as
  GraphQL (bad JSON, syntax error, fragment cycle, unknown operation, ...);
- ``graphql_too_complex`` (``GRAPHQL_TOO_COMPLEX``): a limit is exceeded. The
  rule names it (``graphql.maxCost``, ``graphql.maxDepth``, ...,
  ``graphql.maxBodyBytes`` for an oversized body, ``graphql.introspection``);
  the extensions carry ``limit``, the measured value and the setting, and
  ``cost``/``maxCost`` whenever the operation was measured.

The computed cost is left in ``ctx.graphql_cost`` for the cost budget, also on
a (shadow-mode) refusal that measured it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sidecar.compiled.paths import PathSet
from sidecar.errors import SectionError
from sidecar.graphql.analysis import Analyser
from sidecar.graphql.limits import Limits
from sidecar.graphql.lru import LRUCache
from sidecar.graphql.outcome import Measurements, Problem
from sidecar.graphql.request import (
    GraphQLRequest,
    PersistedQueries,
    content_kind,
    read_request,
)
from sidecar.graphql.schema import build_cost_schema
from sidecar.model.policy import GraphQLSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.step import LocalStep
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.stores.base import Operation

STEP = "graphql"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"  # Envoy truncated the body to its buffer
OUTCOME_CACHE_SIZE = 8192

# Persisted-query texts are shared by every policy: a hash names one text only.
PERSISTED_QUERIES = PersistedQueries()


@dataclass(frozen=True, slots=True)
class _Outcome:
    deny: Deny | None
    measurements: Measurements | None  # None: nothing to analyse (skip)


_SKIP = _Outcome(None, None)

# Request bytes → outcome, for identical repeated requests (no JSON decoding).
_outcomes: LRUCache[_Outcome] = LRUCache(OUTCOME_CACHE_SIZE)


class GraphQLStep(LocalStep):
    __slots__ = ("_analyser", "_limits", "_paths", "_persisted", "policy")
    name = STEP

    def __init__(
        self,
        policy_id: str,
        paths: PathSet,
        analyser: Analyser,
        persisted: PersistedQueries = PERSISTED_QUERIES,
    ) -> None:
        self.policy = policy_id
        self._paths = paths
        self._analyser = analyser
        self._limits = analyser.limits
        self._persisted = persisted

    @property
    def analyser(self) -> Analyser:
        return self._analyser

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        if not self._paths.matches(ctx.path):
            return None
        try:
            outcome = self._outcome(ctx)
        except Exception:  # no request may turn into a 5xx
            outcome = self._refuse(
                Problem("invalid", "", "The request could not be read as GraphQL."), None
            )
        measurements = outcome.measurements
        if measurements is None:
            if ctx.explain:
                ctx.report(STEP, "skip", reason="no GraphQL operation in the request")
            return None
        ctx.graphql_cost = measurements.cost
        if ctx.explain:
            verdict = "allow" if outcome.deny is None else "deny"
            details = _report(measurements)
            if outcome.deny is not None:
                details["rule"] = outcome.deny.rule
            ctx.report(STEP, verdict, **details)
        return outcome.deny

    def _outcome(self, ctx: RequestContext) -> _Outcome:
        method = ctx.method.upper()
        body = ctx.body
        oversized = self._oversized(ctx, method)
        if oversized is not None:
            return oversized
        kind = content_kind(ctx.headers.get("content-type", ""))
        digest = hashlib.blake2b(digest_size=16)
        query_string = ctx.query.encode("utf-8", "surrogatepass")
        digest.update(f"{method}\0{kind}\0{len(query_string)}\0".encode())
        digest.update(query_string)
        digest.update(body)
        key = (self, digest.digest())
        cached = _outcomes.get(key)
        if cached is not None:
            return cached
        read = read_request(method, kind, body, ctx.query_params(), self._persisted)
        if read is None:
            outcome = _SKIP
            cacheable = True
        elif isinstance(read, Problem):
            outcome = self._refuse(read, None)
            # Whether a persisted query is known changes with time.
            cacheable = read.message != "PersistedQueryNotFound"
        else:
            outcome = self._analyse(read)
            cacheable = read.cacheable
        if cacheable:
            _outcomes.put(key, outcome)
        return outcome

    def _oversized(self, ctx: RequestContext, method: str) -> _Outcome | None:
        limit = self._limits.max_body_bytes
        size = len(ctx.body)
        if method in ("GET", "HEAD"):
            size = max(size, len(ctx.query))
        declared = ctx.headers.get("content-length", "")
        if declared.isdigit() and len(declared) < 19:
            size = max(size, int(declared))
        if ctx.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true":
            size = max(size, len(ctx.body) + 1, limit + 1)
        if size <= limit:
            return None
        problem = Problem(
            "too_complex",
            "maxBodyBytes",
            f"The request body is larger than {limit} bytes.",
            "bodyBytes",
            size,
            limit,
        )
        return self._refuse(problem, None)

    def _analyse(self, request: GraphQLRequest) -> _Outcome:
        analysis = self._analyser.analyse_operations(request.operations)
        if analysis.problem is None:
            return _Outcome(None, analysis.measurements)
        return self._refuse(analysis.problem, analysis.measurements)

    def _refuse(self, problem: Problem, measurements: Measurements | None) -> _Outcome:
        measured = measurements if measurements is not None else Measurements(operations=0)
        if problem.kind == "invalid":
            deny = Deny(
                Reason.GRAPHQL_INVALID,
                STEP,
                problem.message,
                extensions={"code": "GRAPHQL_INVALID"},
            )
            return _Outcome(deny, measured)
        extensions: dict[str, object] = {"code": "GRAPHQL_TOO_COMPLEX", "limit": problem.limit}
        if problem.measure:
            extensions[problem.measure] = problem.observed
        if problem.limit.startswith("max"):
            extensions[problem.limit] = problem.maximum
        if problem.measured:
            extensions["cost"] = measured.cost
            extensions["maxCost"] = self._limits.max_cost
        deny = Deny(
            Reason.GRAPHQL_TOO_COMPLEX,
            f"{STEP}.{problem.limit}",
            problem.message,
            extensions=extensions,
        )
        return _Outcome(deny, measured)


def _report(measurements: Measurements) -> dict[str, object]:
    return {
        "depth": measurements.depth,
        "aliases": measurements.aliases,
        "rootFields": measurements.root_fields,
        "directives": measurements.directives,
        "tokens": measurements.tokens,
        "cost": measurements.cost,
        "githubNodes": measurements.github_nodes,
        "githubPoints": measurements.github_points,
        "listSize": measurements.max_list_size,
        "operations": measurements.operations,
    }


class SchemaError(SectionError):
    """A bad ``spec.graphql.schema``."""

    def __init__(self, message: str) -> None:
        super().__init__("spec.graphql.schema", message)


def build_graphql_step(policy_id: str, spec: GraphQLSpec) -> GraphQLStep | None:
    """The step for ``spec.graphql``; None when it names no paths.

    The SDL in ``spec.graphql.schema`` is compiled here, once; a bad SDL raises
    ``SchemaError`` (a ``ValueError``) whose message says what is wrong and where.
    """
    if not spec.paths:
        return None
    schema = None
    if spec.schema_ and spec.schema_.strip():
        try:
            schema = build_cost_schema(spec.schema_)
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc
    analyser = Analyser(Limits.from_spec(spec), schema)
    return GraphQLStep(policy_id, PathSet.compile(spec.paths, empty_matches_all=False), analyser)
