"""The entry point: analyse operations against one policy's limits, with caching.

Two bounded LRU maps, shared by every policy (their keys hold the analyser, so
one policy never sees another's results, and a reloaded policy starts afresh):

1. ``(analyser, hash of the document, operationName)`` → the names of the
   variables that sized a list: the only variables that can change the result;
2. the same key plus the list sizes those variables ask for → the Analysis.

A repeated operation is thus answered with two lookups, whatever else its
variables carry (ids, input objects), and without parsing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from sidecar.graphql.limits import Limits
from sidecar.graphql.lru import LRUCache
from sidecar.graphql.measure import OperationMeasure, measure_operation, variable_key
from sidecar.graphql.outcome import Analysis, Measurements, Problem, saturate
from sidecar.graphql.parse import MAX_NESTING_DEPTH, parse_document, prepare
from sidecar.graphql.request import OperationRequest
from sidecar.graphql.schema import CostSchema

DOCUMENT_CACHE_SIZE = 4096
RESULT_CACHE_SIZE = 8192

_slicing_variables: LRUCache[tuple[str, ...]] = LRUCache(DOCUMENT_CACHE_SIZE)
_results: LRUCache[Analysis] = LRUCache(RESULT_CACHE_SIZE)


def clear_caches() -> None:
    _slicing_variables.clear()
    _results.clear()


@dataclass(frozen=True, slots=True, eq=False)
class Analyser:
    """One policy's GraphQL limits and optional schema; hashed by identity."""

    limits: Limits
    schema: CostSchema | None = None

    def analyse(
        self,
        query: str,
        variables: Mapping[str, object] | None = None,
        operation_name: str | None = None,
    ) -> Analysis:
        digest = hashlib.blake2b(query.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        document_key = (self, digest, operation_name)
        names = _slicing_variables.get(document_key)
        if names is not None:
            sizes = tuple(variable_key(variables, name) for name in names)
            cached = _results.get((document_key, sizes))
            if cached is not None:
                return cached
        analysis, names = self.analyse_uncached(query, variables, operation_name)
        _slicing_variables.put(document_key, names)
        sizes = tuple(variable_key(variables, name) for name in names)
        _results.put((document_key, sizes), analysis)
        return analysis

    def analyse_uncached(
        self,
        query: str,
        variables: Mapping[str, object] | None,
        operation_name: str | None,
    ) -> tuple[Analysis, tuple[str, ...]]:
        """The analysis, and the variables it depended on."""
        limits = self.limits
        parsed = parse_document(query, limits.max_tokens)
        if isinstance(parsed, Problem):
            if parsed.limit == "maxDepth":
                parsed = replace(parsed, maximum=limits.max_depth)
            tokens = parsed.observed if parsed.limit == "maxTokens" else 0
            return Analysis(Measurements(tokens=tokens), parsed), ()
        prepared = prepare(parsed.document, operation_name)
        if isinstance(prepared, Problem):
            return Analysis(Measurements(tokens=parsed.tokens), prepared), ()
        try:
            measured = measure_operation(prepared, variables, limits.default_list_size, self.schema)
        except RecursionError:  # pragma: no cover - the parser caps nesting first
            problem = Problem(
                "too_complex",
                "maxDepth",
                "The query is nested too deeply.",
                "depth",
                MAX_NESTING_DEPTH + 1,
                limits.max_depth,
            )
            return Analysis(Measurements(tokens=parsed.tokens), problem), ()
        measurements = Measurements(
            depth=measured.depth,
            aliases=measured.aliases,
            root_fields=measured.root_fields,
            directives=measured.directives,
            tokens=parsed.tokens,
            cost=measured.cost,
            github_nodes=measured.github_nodes,
            github_points=measured.github_points,
            max_list_size=max(measured.max_list, 0),
            introspection=measured.introspection,
        )
        return Analysis(measurements, self._check(measured)), measured.slicing_variables

    def _check(self, measured: OperationMeasure) -> Problem | None:
        limits = self.limits
        if measured.introspection and not limits.introspection_allowed:
            return Problem(
                "too_complex", "introspection", "Introspection is disabled.", measured=True
            )
        if measured.introspection_lists >= 3:
            return Problem(
                "too_complex",
                "introspection",
                "The introspection query nests fields/interfaces/possibleTypes/inputFields"
                " 3 or more levels deep.",
                "introspectionLists",
                measured.introspection_lists,
                2,
                measured=True,
            )
        checks = (
            ("maxDepth", "depth", measured.depth, limits.max_depth, "The query is {0} levels deep"),
            (
                "maxAliases",
                "aliases",
                measured.aliases,
                limits.max_aliases,
                "The query uses {0} aliases",
            ),
            (
                "maxRootFields",
                "rootFields",
                measured.root_fields,
                limits.max_root_fields,
                "The query selects {0} root fields",
            ),
            (
                "maxDirectives",
                "directives",
                measured.directives,
                limits.max_directives,
                "The query uses {0} directives",
            ),
        )
        for limit, measure, observed, maximum, text in checks:
            if observed > maximum:
                message = f"{text.format(observed)}; the limit is {maximum}."
                return Problem("too_complex", limit, message, measure, observed, maximum, True)
        if measured.max_list > limits.max_list_size:
            return Problem(
                "too_complex",
                "maxListSize",
                f"{measured.max_list_at} asks for more than {limits.max_list_size} items.",
                "listSize",
                measured.max_list,
                limits.max_list_size,
                measured=True,
            )
        if measured.cost > limits.max_cost:
            return Problem(
                "too_complex",
                "maxCost",
                f"The query costs {measured.cost}; the limit is {limits.max_cost}.",
                "cost",
                measured.cost,
                limits.max_cost,
                measured=True,
            )
        return None

    def analyse_operations(self, operations: Sequence[OperationRequest]) -> Analysis:
        """A single operation, or a batch: each operation is held to every limit on its
        own; the batch's tokens and its summed cost are held to maxTokens and maxCost."""
        if len(operations) == 1:
            only = operations[0]
            return self.analyse(only.query, only.variables, only.operation_name)
        total = Measurements(operations=0)
        for index, operation in enumerate(operations, start=1):
            analysis = self.analyse(operation.query, operation.variables, operation.operation_name)
            total = combine(total, analysis.measurements)
            if analysis.problem is not None:
                problem = analysis.problem
                message = f"Operation {index} of the batch: {problem.message}"
                return Analysis(total, _with_message(problem, message))
        limits = self.limits
        if total.tokens > limits.max_tokens:
            return Analysis(
                total,
                Problem(
                    "too_complex",
                    "maxTokens",
                    f"The batch has {total.tokens} tokens; the limit is {limits.max_tokens}.",
                    "tokens",
                    total.tokens,
                    limits.max_tokens,
                    measured=True,
                ),
            )
        if total.cost > limits.max_cost:
            return Analysis(
                total,
                Problem(
                    "too_complex",
                    "maxCost",
                    f"The batch costs {total.cost}; the limit is {limits.max_cost}.",
                    "cost",
                    total.cost,
                    limits.max_cost,
                    measured=True,
                ),
            )
        return Analysis(total)


def combine(total: Measurements, one: Measurements) -> Measurements:
    """Batch figures: the largest per-operation shape, the summed work."""
    return Measurements(
        depth=max(total.depth, one.depth),
        aliases=max(total.aliases, one.aliases),
        root_fields=max(total.root_fields, one.root_fields),
        directives=max(total.directives, one.directives),
        tokens=saturate(total.tokens + one.tokens),
        cost=saturate(total.cost + one.cost),
        github_nodes=saturate(total.github_nodes + one.github_nodes),
        github_points=saturate(total.github_points + one.github_points),
        max_list_size=max(total.max_list_size, one.max_list_size),
        introspection=total.introspection or one.introspection,
        operations=total.operations + one.operations,
    )


def _with_message(problem: Problem, message: str) -> Problem:
    return replace(problem, message=message)
