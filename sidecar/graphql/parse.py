"""Bounded parsing with graphql-core, and the shape checks every executor makes.

The token limit is enforced by the lexer while it reads, so a 10,000-token
document costs no more than ``maxTokens`` tokens of work. Comments count as
tokens (graphql-core's ``max_tokens``): they are read and allocated like any
other token, so a comment flood is work too.

``prepare`` picks the operation the server would run (``operationName``) and
orders the fragments it uses so that each fragment comes after the fragments it
spreads; a fragment cycle, an unknown fragment or an ambiguous operation is an
invalid request, as every GraphQL server would answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from graphql.error import GraphQLError
from graphql.language import (
    DocumentNode,
    FragmentDefinitionNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.language.parser import Parser

from sidecar.graphql.outcome import Problem

try:  # graphql-core >= 3.3 caps nesting below the interpreter's recursion limit
    from graphql.language.parser import MAX_NESTING_DEPTH
except ImportError:  # pragma: no cover - older graphql-core
    MAX_NESTING_DEPTH = 200

__all__ = [
    "MAX_NESTING_DEPTH",
    "ParsedDocument",
    "PreparedOperation",
    "parse_document",
    "prepare",
]

_TOKEN_LIMIT_MESSAGE = "Document contains more than"  # noqa: S105 - not a secret


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    document: DocumentNode
    tokens: int


def parse_document(text: str, max_tokens: int) -> ParsedDocument | Problem:
    """Parse ``text``, reading at most ``max_tokens`` tokens (comments included)."""
    parser = Parser(text, no_location=True, max_tokens=max_tokens)
    try:
        document = parser.parse_document()
    except RecursionError:
        return _too_deep()
    except GraphQLError as exc:
        if _TOKEN_LIMIT_MESSAGE in exc.message:
            return Problem(
                "too_complex",
                "maxTokens",
                f"The query has more than {max_tokens} tokens.",
                "tokens",
                max_tokens + 1,
                max_tokens,
            )
        if "nested too deeply" in exc.message:
            return _too_deep()
        return Problem("invalid", "", _located(exc))
    return ParsedDocument(document, parser.token_count)


def _located(error: GraphQLError) -> str:
    locations = error.locations
    if locations:
        return f"{error.message} (line {locations[0].line}, column {locations[0].column})"
    return error.message


def _too_deep() -> Problem:
    return Problem(
        "too_complex",
        "maxDepth",
        f"The query is nested more than {MAX_NESTING_DEPTH} levels deep.",
        "depth",
        MAX_NESTING_DEPTH + 1,
        0,
    )


@dataclass(frozen=True, slots=True)
class PreparedOperation:
    operation: OperationDefinitionNode
    fragments: Mapping[str, FragmentDefinitionNode]
    # The fragments the operation reaches, each after every fragment it spreads.
    order: tuple[str, ...]


def prepare(document: DocumentNode, operation_name: str | None) -> PreparedOperation | Problem:
    operations: list[OperationDefinitionNode] = []
    fragments: dict[str, FragmentDefinitionNode] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            operations.append(definition)
        elif isinstance(definition, FragmentDefinitionNode):
            name = definition.name.value
            if name in fragments:
                return Problem("invalid", "", f'There can be only one fragment named "{name}".')
            fragments[name] = definition
        else:
            return Problem("invalid", "", "The document may contain only operations and fragments.")
    operation = _select(operations, operation_name)
    if isinstance(operation, Problem):
        return operation

    spreads = {name: _spreads(fragment.selection_set) for name, fragment in fragments.items()}
    for name, used in spreads.items():
        for target in used:
            if target not in fragments:
                return Problem("invalid", "", f'Unknown fragment "{target}" in fragment "{name}".')
    root_spreads = _spreads(operation.selection_set)
    for target in root_spreads:
        if target not in fragments:
            return Problem("invalid", "", f'Unknown fragment "{target}".')
    cycle = _find_cycle(spreads)
    if cycle is not None:
        path = " -> ".join(cycle)
        return Problem("invalid", "", f"Fragments must not form a cycle: {path}.")
    return PreparedOperation(operation, fragments, _dependency_order(root_spreads, spreads))


def _select(
    operations: list[OperationDefinitionNode], operation_name: str | None
) -> OperationDefinitionNode | Problem:
    if not operations:
        return Problem("invalid", "", "The document contains no operation.")
    named: dict[str, OperationDefinitionNode] = {}
    for operation in operations:
        if operation.name is None:
            if len(operations) > 1:
                return Problem("invalid", "", "An anonymous operation must be the only operation.")
            continue
        name = operation.name.value
        if name in named:
            return Problem("invalid", "", f'There can be only one operation named "{name}".')
        named[name] = operation
    if operation_name is None:
        if len(operations) > 1:
            return Problem(
                "invalid", "", "The document has several operations: operationName is required."
            )
        return operations[0]
    selected = named.get(operation_name)
    if selected is None:
        return Problem("invalid", "", f'Unknown operation named "{operation_name}".')
    return selected


def _spreads(selection_set: SelectionSetNode) -> tuple[str, ...]:
    """Names of the fragments spread anywhere below ``selection_set`` (not expanded)."""
    found: dict[str, None] = {}
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            kind = selection.kind
            if kind == "fragment_spread":
                found[selection.name.value] = None  # type: ignore[attr-defined]
                continue
            below = selection.selection_set  # type: ignore[attr-defined]
            if below is not None:
                stack.append(below)
    return tuple(found)


def _find_cycle(spreads: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """An iterative depth-first search, so a long fragment chain cannot exhaust the stack."""
    done: set[str] = set()
    for start in spreads:
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        iterators = [iter(spreads[start])]
        while iterators:
            target = next(iterators[-1], None)
            if target is None:
                iterators.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target in done:
                continue
            path.append(target)
            on_path.add(target)
            iterators.append(iter(spreads[target]))
    return None


def _dependency_order(
    roots: tuple[str, ...], spreads: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    """Post-order over the (acyclic) spread graph from ``roots``."""
    order: list[str] = []
    seen: set[str] = set()
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(spreads[root]))]
        while stack:
            name, targets = stack[-1]
            target = next(targets, None)
            if target is None:
                stack.pop()
                order.append(name)
            elif target not in seen:
                seen.add(target)
                stack.append((target, iter(spreads[target])))
    return tuple(order)
