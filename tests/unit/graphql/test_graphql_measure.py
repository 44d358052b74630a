"""The structural measurements: depth, aliases, root fields, directives, list sizes,
introspection; fragments expanded, variables resolved."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sidecar.graphql.measure import (
    MISSING,
    OperationMeasure,
    measure_operation,
    size_of,
    variable_key,
)
from sidecar.graphql.outcome import SATURATION
from sidecar.graphql.parse import ParsedDocument, PreparedOperation, parse_document, prepare


def measure(
    text: str,
    variables: Mapping[str, object] | None = None,
    operation_name: str | None = None,
    default_list_size: int = 10,
) -> OperationMeasure:
    parsed = parse_document(text, 1_000_000)
    assert isinstance(parsed, ParsedDocument), parsed
    prepared = prepare(parsed.document, operation_name)
    assert isinstance(prepared, PreparedOperation), prepared
    return measure_operation(prepared, variables, default_list_size, None)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{ a }", 1),
        ("{ viewer { login } }", 2),
        ("{ a { b { c } } d }", 3),
        ("{ a { ... on T { b { c } } } }", 3),
        ("{ a { ...F } } fragment F on T { b { c { d } } }", 4),
        ("{ ...F } fragment F on Query { a { ...G } } fragment G on T { b }", 2),
        # Apollo's documented example: fragments and inline fragments are transparent.
        (
            "{ book { ...bookDetails } } fragment bookDetails on Book"
            " { details { ... on ProductDetailsBook { country } } }",
            3,
        ),
    ],
)
def test_depth_counts_fields_along_the_deepest_path(text: str, depth: int) -> None:
    assert measure(text).depth == depth


def test_aliases_are_counted_per_expanded_spread() -> None:
    text = "{ a: x ...F ...F } fragment F on Query { b: y c: z }"
    assert measure(text).aliases == 5


def test_root_fields_include_fragments_at_the_root() -> None:
    text = "{ a b ...F ... on Query { e } } fragment F on Query { c d { x y z } }"
    assert measure(text).root_fields == 5


def test_directives_everywhere_are_counted() -> None:
    text = """
    query Q($v: Int @d1) @d2 {
      a @d3 { b @d4 @d5 }
      ...F @d6
      ... on Query @d7 { c }
    }
    fragment F on Query @d8 { e @d9 }
    """
    assert measure(text).directives == 9


def test_a_fragment_used_twice_counts_twice() -> None:
    text = "{ x { ...F } y { ...F } } fragment F on T { a @d b: c }"
    result = measure(text)
    assert (result.directives, result.aliases) == (2, 2)


def test_fragment_doubling_saturates_instead_of_exploding() -> None:
    count = 80
    chain = " ".join(f"fragment F{i} on T {{ ...F{i + 1} ...F{i + 1} }}" for i in range(count))
    text = "{ ...F0 } " + chain + f" fragment F{count} on T {{ a: b @d x {{ y }} }}"
    result = measure(text)
    assert result.aliases == SATURATION
    assert result.directives == SATURATION
    assert result.cost == SATURATION
    assert result.root_fields == SATURATION


def test_introspection_is_flagged_and_exempt_from_depth() -> None:
    text = "{ __schema { types { name fields { name type { name ofType { name ofType { name } } } } } } }"
    result = measure(text)
    assert result.introspection is True
    assert result.depth == 0
    assert result.cost == 0
    assert result.introspection_lists == 1


def test_typename_is_not_introspection() -> None:
    result = measure("{ __typename viewer { __typename } }")
    assert result.introspection is False
    assert result.depth == 2


def test_introspection_in_a_fragment_is_found() -> None:
    result = measure('{ ...F } fragment F on Query { __type(name: "User") { name } }')
    assert result.introspection is True


@pytest.mark.parametrize(
    ("text", "lists"),
    [
        ("{ __schema { types { fields { name } } } }", 1),
        ("{ __schema { types { fields { type { fields { name } } } } } }", 2),
        ("{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }", 3),
        ('{ __type(name: "T") { interfaces { possibleTypes { inputFields { name } } } } }', 3),
        (
            "{ __schema { types { ...T } } } fragment T on __Type"
            " { fields { type { ...U } } } fragment U on __Type { interfaces { fields { name } } }",
            3,
        ),
    ],
)
def test_introspection_list_nesting(text: str, lists: int) -> None:
    assert measure(text).introspection_lists == lists


def test_list_sizes_from_literals() -> None:
    result = measure("{ a(first: 5) { x } b(last: 70) { y } c(limit: 30) { z } }")
    assert result.max_list == 70
    assert result.max_list_at == "b(last: 70)"


def test_no_list_size_when_none_is_asked_for() -> None:
    assert measure("{ a { b } }").max_list == -1


@pytest.mark.parametrize(
    ("variables", "size"),
    [
        ({"n": 100000}, 100000),
        ({"n": 1e5}, 100000),
        ({"n": "100000"}, 100000),
        ({"n": " 1e5 "}, 100000),
        ({"n": "9" * 5000}, SATURATION),
        ({"n": 10**40}, SATURATION),
    ],
)
def test_list_sizes_smuggled_in_variables(variables: dict[str, object], size: int) -> None:
    result = measure("query ($n: Int) { a(first: $n) { b } }", variables)
    assert result.max_list == size
    assert result.slicing_variables == ("n",)


def test_a_variable_default_applies_when_the_variable_is_not_sent() -> None:
    text = "query ($n: Int = 100000) { a(first: $n) { b } }"
    assert measure(text).max_list == 100000
    assert measure(text, {"n": 5}).max_list == 5


def test_an_explicit_null_is_no_size_even_with_a_default() -> None:
    text = "query ($n: Int = 100000) { a(first: $n) { nodes { b } } }"
    result = measure(text, {"n": None}, default_list_size=7)
    assert result.max_list == -1
    assert result.cost == 2 + 7


def test_an_undeclared_variable_is_still_read() -> None:
    # Invalid per spec, but a lenient server might run it: read what it would read.
    assert measure("{ a(first: $n) { b } }", {"n": 500}).max_list == 500


def test_huge_integer_literals_saturate() -> None:
    result = measure("{ a(first: " + "9" * 5000 + ") { b } }")
    assert result.max_list == SATURATION


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (None, None),
        (True, None),
        (False, None),
        (7, 7),
        (-3, -3),
        (2.0, 2),
        (2.5, None),
        (float("inf"), None),
        (float("nan"), None),
        ("12", 12),
        ("abc", None),
        ("", None),
        ([100], None),
        ({"n": 1}, None),
    ],
)
def test_size_of_json_values(value: object, size: int | None) -> None:
    assert size_of(value) == size


def test_variable_key_tells_missing_from_null() -> None:
    assert variable_key(None, "n") is MISSING
    assert variable_key({}, "n") is MISSING
    assert variable_key({"n": None}, "n") is None
    assert variable_key({"n": "5"}, "n") == 5


def test_literal_skip_and_include_remove_cost_not_counts() -> None:
    base = measure("{ viewer { a(first: 50) { nodes { x } } } }")
    skipped = measure("{ viewer { a(first: 50) @skip(if: true) { nodes { x } } } }")
    excluded = measure("{ viewer { a(first: 50) @include(if: false) { nodes { x } } } }")
    kept = measure("{ viewer { a(first: 50) @skip(if: false) { nodes { x } } } }")
    by_variable = measure(
        "query ($s: Boolean!) { viewer { a(first: 50) @skip(if: $s) { nodes { x } } } }"
    )
    assert base.cost == 1 + 2 + 50
    assert skipped.cost == excluded.cost == 1
    assert kept.cost == by_variable.cost == base.cost
    assert skipped.max_list == 50
    assert skipped.depth == base.depth
    assert skipped.github_nodes == 0


def test_skipped_fragment_spread() -> None:
    text = "{ viewer { ...F @skip(if: true) } } fragment F on User { a(first: 9) { nodes { b } } }"
    result = measure(text)
    assert result.cost == 1
    assert result.directives == 1
