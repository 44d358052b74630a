"""Compiling spec.graphql.schema: what it derives, and errors that say what is wrong."""

from __future__ import annotations

import re

import pytest

from sidecar.graphql.schema import build_cost_schema
from tests.unit.graphql.graphql_examples import SDL


def test_relay_connections_are_detected_structurally() -> None:
    schema = build_cost_schema(SDL)
    user = schema.types["User"]
    repositories = user.fields["repositories"]
    assert repositories.connection
    assert not repositories.is_list
    assert repositories.type_name == "RepositoryConnection"
    connection = schema.types["RepositoryConnection"]
    assert connection.fields["edges"].sized
    assert connection.fields["nodes"].sized
    assert not connection.fields["totalCount"].sized
    assert not user.fields["login"].connection
    assert user.fields["login"].leaf


def test_abstract_types_know_their_possible_types() -> None:
    schema = build_cost_schema(SDL)
    assert schema.types["SearchResultItem"].possible == {
        "Issue",
        "PullRequest",
        "Repository",
        "User",
    }
    assert "Repository" in schema.types["Node"].possible
    assert schema.types["User"].possible == {"User"}


def test_roots() -> None:
    schema = build_cost_schema(SDL)
    assert schema.query is schema.types["Query"]
    assert schema.mutation is schema.types["Mutation"]
    assert schema.subscription is None


def test_schema_definition_with_custom_root_names() -> None:
    schema = build_cost_schema("schema { query: Root } type Root { a: Int }")
    assert schema.query is not None
    assert schema.query.name == "Root"


def test_foreign_directives_need_no_definition() -> None:
    sdl = """
    type Query { me: User @auth(requires: USER) }
    type User @key(fields: "id") { id: ID! name: String @deprecated(reason: "x") }
    """
    assert "User" in build_cost_schema(sdl).types


def test_cost_directive_may_be_defined_by_the_user() -> None:
    sdl = """
    directive @cost(weight: String!) on FIELD_DEFINITION | OBJECT
    type Query { report: Report @cost(weight: "12") }
    type Report { total: Int }
    """
    assert build_cost_schema(sdl).types["Query"].fields["report"].weight == 12


def test_sized_fields_mark_the_returned_type() -> None:
    sdl = """
    type Query { page(size: Int): Page @listSize(slicingArguments: ["size"], sizedFields: ["items"]) }
    type Page { items: [Int] total: Int }
    """
    schema = build_cost_schema(sdl)
    assert schema.types["Query"].fields["page"].connection
    assert schema.types["Page"].fields["items"].sized
    assert "items" in schema.sized_names


@pytest.mark.parametrize(
    ("sdl", "message"),
    [
        ("type Query { a: Int ", "line 1, column 21: Syntax Error"),
        ("type Query { a: Missing }", "line 1, column 17: Unknown type 'Missing'"),
        (
            "type Query { a: Int }\ntype Query { b: Int }",
            "line 1, column 6 and line 2, column 6: There can be only one type named 'Query'",
        ),
        ("type Mutation { a: Int }", "Query root type must be provided"),
        ("type Query { a: Int a: String }", "Field 'Query.a' can only be defined once"),
        (
            "interface I { a: Int } type Query implements I { b: Int }",
            "Interface field I.a expected",
        ),
        (
            'type Query { a: Int @cost(weight: "heavy") }',
            "Query.a: @cost(weight:) must be a number",
        ),
        ("type Query { a: Int @cost }", "Query.a: @cost(weight:) must be a number"),
        ("type Query { a(x: Int @cost(weight: true)): Int }", "Query.a(x:): @cost(weight:)"),
        (
            "type Query { a: [Int] @listSize(assumedSize: -1) }",
            "@listSize(assumedSize:) must be a non-negative Int",
        ),
        (
            'type Query { a: [Int] @listSize(assumedSize: "5") }',
            "@listSize(assumedSize:) must be a non-negative Int",
        ),
        (
            'type Query { a(first: Int): [Int] @listSize(slicingArguments: ["count"]) }',
            "Query.a: @listSize(slicingArguments:) names unknown argument 'count'",
        ),
        (
            "type Query { a: [Int] @listSize(sizedFields: [1]) }",
            "@listSize(sizedFields:) must be a list of strings",
        ),
        (
            'type T @cost(weight: "x") { a: Int } type Query { t: T }',
            "T: @cost(weight:) must be a number",
        ),
    ],
)
def test_bad_sdl_is_a_value_error_that_names_the_problem(sdl: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_cost_schema(sdl)


def test_a_single_string_is_accepted_where_a_list_is_expected() -> None:
    # GraphQL input coercion turns a single value into a one-item list.
    sdl = 'type Query { a(n: Int): [Int] @listSize(slicingArguments: "n") }'
    assert build_cost_schema(sdl).types["Query"].fields["a"].slicing == {"n"}
