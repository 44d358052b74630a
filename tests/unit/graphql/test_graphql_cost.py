"""The cost model, by hand-computed examples (docs/graphql-cost.md, section 4)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sidecar.graphql import cost as model
from sidecar.graphql.analysis import Analyser
from sidecar.graphql.limits import Limits
from sidecar.graphql.outcome import Measurements
from sidecar.graphql.schema import CostSchema, build_cost_schema
from tests.unit.graphql.graphql_examples import COMPLEX, POINTS, SDL, SIMPLE

UNLIMITED = Limits(
    max_depth=1000,
    max_aliases=10**6,
    max_root_fields=10**6,
    max_directives=10**6,
    max_tokens=10**6,
    max_cost=10**15,
    max_list_size=10**9,
)
GITHUB = build_cost_schema(SDL)


def measured(
    query: str,
    schema: CostSchema | None = None,
    variables: Mapping[str, object] | None = None,
    limits: Limits = UNLIMITED,
) -> Measurements:
    analysis = Analyser(limits, schema).analyse(query, variables)
    assert analysis.problem is None, analysis.problem
    return analysis.measurements


def cost(query: str, schema: CostSchema | None = None, **kwargs: object) -> int:
    return measured(query, schema, **kwargs).cost  # type: ignore[arg-type]


# GitHub's documented examples: the same figures with and without the schema.
@pytest.mark.parametrize("schema", [None, GITHUB], ids=["inferred", "schema"])
@pytest.mark.parametrize(
    ("query", "shopify_cost", "nodes", "points"),
    [
        (SIMPLE, 653, 550, 1),
        (COMPLEX, 26_265, 22_060, 21),
        (POINTS, 315_303, 305_100, 51),
    ],
    ids=["simple", "complex", "points"],
)
def test_github_documented_examples(
    query: str, shopify_cost: int, nodes: int, points: int, schema: CostSchema | None
) -> None:
    result = measured(query, schema)
    assert (result.cost, result.github_nodes, result.github_points) == (shopify_cost, nodes, points)


def test_github_simple_query_passes_the_default_limits() -> None:
    analysis = Analyser(Limits()).analyse(SIMPLE)
    assert analysis.allowed
    assert analysis.measurements.github_nodes == 550
    assert analysis.measurements.github_points == 1


def test_github_complex_query_is_refused_by_default_cost_only() -> None:
    problem = Analyser(Limits()).analyse(COMPLEX).problem
    assert problem is not None
    assert problem.limit == "maxCost"


# Shopify's published weights.
def test_shopify_object_with_scalars_costs_one() -> None:
    assert cost("{ shop { id name timezoneOffsetMinutes customerAccounts } }") == 1


def test_shopify_connection_costs_two_plus_first() -> None:
    assert cost("{ products(first: 50) { edges { node { title } } } }") == 52
    assert cost("{ products(last: 50) { nodes { title } } }") == 52


def test_shopify_nested_connections_multiply() -> None:
    query = "{ products(first: 10) { edges { node { title variants(first: 5) { edges { node { price } } } } } } }"
    assert cost(query) == 2 + 10 * (1 + (2 + 5 * 1))


def test_shopify_mutation_costs_ten_plus_payload() -> None:
    assert cost('mutation { productDelete(input: {id: "1"}) { deletedProductId } }') == 10
    assert (
        cost("mutation { productCreate(input: {}) { product { id } userErrors { message } } }")
        == 12
    )
    two = 'mutation { a: productDelete(id: "1") { deletedProductId } b: productDelete(id: "2") { deletedProductId } }'
    assert cost(two) == 20


def test_mutation_cost_counts_root_fields_in_fragments() -> None:
    query = "mutation { ...M } fragment M on Mutation { a(x: 1) { ok } b { ok } }"
    assert cost(query) == 20


def test_mutation_leaf_root_field_costs_ten() -> None:
    assert cost("mutation { deleteAll }") == 10


def test_scalars_enums_and_typename_are_free() -> None:
    assert cost("{ __typename a b c }") == 0


def test_duplicated_leaves_cost_nothing_duplicated_objects_each_cost() -> None:
    assert cost("{ viewer { " + "login " * 1000 + "} }") == 1
    assert cost("{ " + "viewer { login } " * 7 + "}") == 7


def test_connection_extras_are_free_and_other_fields_charged_once() -> None:
    query = """{ repos(first: 10) {
        totalCount
        pageInfo { hasNextPage endCursor }
        edges { cursor node { name } }
        owner { login }
    } }"""
    # 2 + 10 items of 1 + owner (1, once, not per item)
    assert cost(query) == 2 + 10 + 1


def test_connection_with_both_edges_and_nodes_pays_the_item_once() -> None:
    query = "{ repos(first: 10) { edges { node { owner { login } } } nodes { issues { id } } } }"
    # per item: 1 + owner 1 + issues 1
    assert cost(query) == 2 + 10 * 3


def test_list_without_connection_multiplies_its_selection() -> None:
    assert cost("{ users(limit: 20) { name friend { name } } }") == 20 * (1 + 1)


def test_scalar_list_with_first_costs_nothing_but_is_checked() -> None:
    result = measured("{ tags(first: 50) }")
    assert result.cost == 0
    assert result.max_list_size == 50


def test_connection_without_first_uses_the_default_list_size() -> None:
    assert cost("{ viewer { repositories { nodes { name } } } }") == 1 + 2 + 10
    limits = Limits(default_list_size=3)
    assert (
        measured("{ viewer { repositories { nodes { name } } } }", limits=limits).cost == 1 + 2 + 3
    )


def test_a_negative_first_is_an_empty_list() -> None:
    assert cost("{ repos(first: -5) { nodes { name } } }") == 2


def test_variables_size_the_list() -> None:
    query = "query ($n: Int) { repos(first: $n) { nodes { name } } }"
    assert cost(query, variables={"n": 30}) == 32
    assert cost(query, variables={}) == 12  # no value: defaultListSize


def test_largest_slicing_argument_wins() -> None:
    assert cost("{ repos(first: 3, last: 40) { nodes { name } } }") == 42


def test_fragments_inside_a_connection() -> None:
    query = """{ repos(first: 5) { ...Conn } }
    fragment Conn on RepositoryConnection { pageInfo { endCursor } edges { ...Edge } }
    fragment Edge on RepositoryEdge { cursor node { owner { login } } }"""
    assert cost(query) == 2 + 5 * (1 + 1)


def test_schemaless_sums_fragments_on_different_types() -> None:
    query = "{ search(first: 10) { nodes { ... on Issue { author { login } } ... on PullRequest { author { login } commits(first: 5) { nodes { id } } } } } }"
    assert cost(query) == 2 + 10 * (1 + 1 + 1 + 7)


def test_schema_charges_the_most_expensive_type_of_a_union() -> None:
    query = 'query { search(query: "x", type: ISSUE, first: 10) { nodes { ... on Issue { author { login } } ... on PullRequest { commits(first: 5) { nodes { id } } } } } }'
    # union: max(Issue 1, PullRequest 2 + 5 = 7)
    assert cost(query, GITHUB) == 2 + 10 * (1 + 7)


def test_schema_fragments_on_an_interface_apply_to_every_type() -> None:
    query = 'query { node(id: "1") { ... on Node { id } ... on Repository { owner { login } } ... on Issue { author { login } comments(first: 2) { nodes { id } } } } }'
    # Node: max over Repository (1) and Issue (1 + 4) and the others (0)
    assert cost(query, GITHUB) == 1 + 5


def test_schema_fragment_on_the_parent_type_itself_is_charged_in_full() -> None:
    query = "{ viewer { ... on User { repositories(first: 3) { nodes { name } } } ...U } } fragment U on User { followers(first: 2) { nodes { login } } }"
    assert cost(query, GITHUB) == 1 + 5 + 4


def test_schema_fragment_that_cannot_apply_costs_nothing() -> None:
    query = "{ viewer { ... on Repository { owner { login } } } }"
    assert cost(query, GITHUB) == 1


def test_schema_unknown_fields_are_inferred() -> None:
    query = "{ viewer { brandNewField(first: 4) { nodes { x } } } }"
    assert cost(query, GITHUB) == 1 + 2 + 4


def test_schema_disagreeing_query_is_inferred() -> None:
    # `login` is a scalar in the schema, the query selects into it.
    assert cost("{ viewer { login { x } } }", GITHUB) == 2


def test_schema_connection_without_first_uses_default() -> None:
    assert cost("{ viewer { repositories { nodes { name } } } }", GITHUB) == 1 + 2 + 10


DIRECTIVES_SDL = """
type Query {
  books(limit: Int = 25): [Book!]!
  bestsellers: [Book!]! @listSize(assumedSize: 5)
  top(count: Int, first: Int): [Book!]! @listSize(slicingArguments: ["count"])
  page(size: Int): BookPage @listSize(slicingArguments: ["size"], sizedFields: ["items"])
  expensive: Report @cost(weight: "7.5")
  cheap: Report @cost(weight: 0)
  priced(detailed: Boolean @cost(weight: 4)): Int
  taxed: Money
  tags(first: Int): [Tag!]! @cost(weight: 2)
}
type Mutation { heavy: Int @cost(weight: 50) plain: Int }
type Book { title: String! author: Author! }
type Author { name: String! }
type BookPage { items: [Book!]! total: Int! }
type Report @cost(weight: 3) { total: Int! }
scalar Money @cost(weight: 2)
enum Tag @cost(weight: 1) { A B }
"""
DIRECTIVES = build_cost_schema(DIRECTIVES_SDL)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("{ books { title } }", 25 * 1),  # schema default of the slicing argument
        ("{ books(limit: 4) { author { name } } }", 4 * (1 + 1)),
        ("{ bestsellers { title } }", 5),  # @listSize(assumedSize:)
        ("{ top(count: 3) { title } }", 3),  # @listSize(slicingArguments:)
        ("{ top(first: 3) { title } }", 10),  # `first` is not a slicing argument here
        ("{ page(size: 6) { total items { author { name } } } }", 1 + 1 + 6 * (1 + 1)),
        ("{ expensive { total } }", 8),  # "7.5" rounds up
        ("{ cheap { total } }", 0),
        ("{ priced }", 0),
        ("{ priced(detailed: true) }", 4),  # argument weight
        ("{ taxed }", 2),  # scalar type weight
        ("{ tags(first: 3) }", 3 * 2),  # leaf list with a field weight
        ("mutation { heavy plain }", 50 + 10),
    ],
)
def test_cost_directives(query: str, expected: int) -> None:
    assert cost(query, DIRECTIVES) == expected


def test_schema_list_sizes_from_schema_defaults_are_not_list_size_violations() -> None:
    limits = Limits(max_list_size=10)
    analysis = Analyser(limits, DIRECTIVES).analyse("{ books { title } }")
    assert analysis.allowed
    assert analysis.measurements.max_list_size == 0


def test_custom_slicing_arguments_are_held_to_max_list_size() -> None:
    problem = Analyser(Limits(), DIRECTIVES).analyse("{ top(count: 500) { title } }").problem
    assert problem is not None
    assert (problem.limit, problem.observed) == ("maxListSize", 500)


@pytest.mark.parametrize(
    ("requests", "points"),
    [(0, 1), (1, 1), (49, 1), (149, 1), (150, 2), (2_102, 21), (5_101, 51), (5_150, 52)],
)
def test_github_points_round_half_up_with_a_minimum_of_one(requests: int, points: int) -> None:
    assert model.github_points(requests) == points


def test_github_nodes_multiply_down_the_path() -> None:
    query = "{ a(first: 3) { nodes { b(first: 4) { nodes { c(first: 5) { nodes { id } } } } } } }"
    result = measured(query)
    assert result.github_nodes == 3 + 3 * 4 + 3 * 4 * 5
    # requests: 1 + 3 + 12 = 16 → 0.16 → minimum 1
    assert result.github_points == 1


def test_fifty_by_fifty() -> None:
    result = measured(
        "{ viewer { repositories(first: 50) { nodes { issues(first: 50) { nodes { title } } } } } }"
    )
    assert (result.cost, result.github_nodes) == (2_653, 2_550)
