"""Whatever a client sends, the GraphQL analysis answers and never raises.

Random text, random documents built from GraphQL's grammar (fragments that may
form cycles or be missing, variables, directives, aliases, huge numbers), random
request bodies and headers, with and without a schema. Also checks properties
of the model: cached and fresh analyses agree; a larger ``first`` never costs
less; the figures stay within their saturation bound.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.graphql.analysis import Analyser
from sidecar.graphql.limits import Limits
from sidecar.graphql.outcome import SATURATION, Analysis
from sidecar.graphql.schema import build_cost_schema
from sidecar.model.policy import GraphQLSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Reason
from sidecar.steps.graphql import build_graphql_step

SDL = """
interface Node { id: ID! }
union Result = User | Repo
type Query {
  viewer: User!
  node(id: ID!): Node
  search(first: Int, last: Int): [Result!]! @listSize(slicingArguments: ["first", "last"])
  repos(first: Int, limit: Int = 30): RepoConnection! @cost(weight: 2)
}
type Mutation { star(id: ID!): Repo @cost(weight: 20) }
type User implements Node { id: ID! login: String! repos(first: Int, last: Int): RepoConnection! }
type Repo implements Node { id: ID! name: String! owner: User! tags(first: Int): [String!]! }
type RepoConnection { edges: [RepoEdge] nodes: [Repo] pageInfo: PageInfo! totalCount: Int! }
type RepoEdge { cursor: String! node: Repo }
type PageInfo { hasNextPage: Boolean! }
"""
SCHEMA = build_cost_schema(SDL)
LIMITS = Limits()
SCHEMALESS = Analyser(LIMITS)
WITH_SCHEMA = Analyser(LIMITS, SCHEMA)

names = st.sampled_from(
    [
        "viewer",
        "node",
        "search",
        "repos",
        "edges",
        "nodes",
        "node",
        "login",
        "name",
        "id",
        "owner",
        "tags",
        "pageInfo",
        "totalCount",
        "cursor",
        "star",
        "__typename",
        "__schema",
        "__type",
        "fields",
        "types",
        "interfaces",
        "x",
    ]
)
type_names = st.sampled_from(
    ["User", "Repo", "Node", "Result", "Query", "Unknown", "RepoConnection"]
)
numbers = st.one_of(
    st.integers(min_value=-5, max_value=200),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**5),
)
argument_values = st.one_of(
    numbers.map(str),
    st.sampled_from(
        ["$n", "$m", "$missing", "1e5", "2.5", '"100"', "null", "true", "[1, 2]", "{a: 1}"]
    ),
)
arguments = st.lists(
    st.tuples(st.sampled_from(["first", "last", "limit", "id", "after"]), argument_values),
    max_size=3,
).map(lambda pairs: "(" + ", ".join(f"{k}: {v}" for k, v in pairs) + ")" if pairs else "")
directives = st.lists(
    st.sampled_from(
        [
            "@skip(if: true)",
            "@skip(if: false)",
            "@include(if: false)",
            "@include(if: $flag)",
            "@custom",
            "@deprecated",
        ]
    ),
    max_size=2,
).map(" ".join)


FRAGMENTS = ("A", "B", "C", "D")


def selection_sets(depth: int, spreadable: tuple[str, ...] = FRAGMENTS) -> st.SearchStrategy[str]:
    """Selection sets that spread only ``spreadable`` fragments (keeps most documents acyclic)."""
    below = st.deferred(lambda: selection_sets(depth - 1, spreadable))
    field = st.builds(
        lambda alias, name, args, dirs, sub: f"{alias}{name}{args} {dirs} {sub}",
        st.sampled_from(["", "", "a1: ", "a2: "]),
        names,
        arguments,
        directives,
        st.just("") if depth == 0 else st.one_of(st.just(""), below),
    )
    choices = [field, field]
    if spreadable:
        choices.append(
            st.builds(
                lambda name, dirs: f"...{name} {dirs}", st.sampled_from(spreadable), directives
            )
        )
    if depth > 0:
        choices.append(
            st.builds(
                lambda condition, sub: f"... on {condition} {sub}" if condition else f"... {sub}",
                st.one_of(st.just(""), type_names),
                below,
            )
        )
    return st.lists(st.one_of(*choices), min_size=1, max_size=4).map(
        lambda items: "{ " + " ".join(items) + " }"
    )


def _document(
    head: str, body: str, conditions: list[str], bodies: list[str], *, cyclic: bool, extra: str
) -> str:
    fragments = [
        f"fragment {name} on {condition} {fragment_body}"
        for name, condition, fragment_body in zip(FRAGMENTS, conditions, bodies, strict=True)
    ]
    if cyclic:  # D spreads A, which (maybe) reaches D: a cycle, or a harmless spread
        fragments[-1] = fragments[-1][:-1] + "...A }"
    return " ".join([head, body, *fragments, extra])


documents = st.builds(
    _document,
    st.sampled_from(
        [
            "",
            "query",
            "query Q",
            "mutation",
            "subscription S",
            "query ($n: Int)",
            "query Q($n: Int = 100000, $m: Int = 3, $flag: Boolean)",
        ]
    ),
    selection_sets(4),
    st.lists(type_names, min_size=4, max_size=4),
    st.tuples(*(selection_sets(2, FRAGMENTS[index + 1 :]) for index in range(4))).map(list),
    cyclic=st.sampled_from([False, False, False, True]),
    extra=st.sampled_from(
        [
            "",
            "",
            "",
            "",
            "",
            "",
            "fragment A on User { x }",
            "query Other { y }",
            "type T { a: Int }",
        ]
    ),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
variables = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"n": json_values, "m": json_values, "flag": json_values}),
)


def check(analysis: Analysis) -> None:
    measured = analysis.measurements
    for value in (
        measured.depth,
        measured.aliases,
        measured.root_fields,
        measured.directives,
        measured.tokens,
        measured.cost,
        measured.github_nodes,
        measured.github_points,
    ):
        assert 0 <= value <= SATURATION
    if analysis.problem is not None:
        assert analysis.problem.kind in ("invalid", "too_complex")
        assert analysis.problem.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_never_raises(text: str) -> None:
    check(SCHEMALESS.analyse(text))
    check(WITH_SCHEMA.analyse(text))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, variables, st.sampled_from([None, "Q", "S", "Nope"]))
def test_random_documents_never_raise(
    document: str, values: dict[str, Any] | None, name: str | None
) -> None:
    for analyser in (SCHEMALESS, WITH_SCHEMA):
        cached = analyser.analyse(document, values, name)
        check(cached)
        fresh, _ = analyser.analyse_uncached(document, values, name)
        assert fresh == cached
        assert analyser.analyse(document, values, name) == cached


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.integers(min_value=0, max_value=500), st.integers(min_value=0, max_value=500))
def test_a_larger_first_never_costs_less(document: str, small: int, large: int) -> None:
    small, large = sorted((small, large))
    for analyser in (SCHEMALESS, WITH_SCHEMA):
        low = analyser.analyse(document, {"n": small, "m": small}).measurements
        high = analyser.analyse(document, {"n": large, "m": large}).measurements
        if low.operations and high.operations and low.tokens and high.tokens:
            assert high.cost >= low.cost
            assert high.github_nodes >= low.github_nodes


STEP = build_graphql_step("prop/graphql", GraphQLSpec())
SCHEMA_STEP = build_graphql_step(
    "prop/graphql", GraphQLSpec.model_validate({"schema": SDL, "maxBodyBytes": 2048})
)

operation_objects = st.fixed_dictionaries(
    {},
    optional={
        "query": st.one_of(documents, st.text(max_size=50), json_values),
        "variables": st.one_of(variables, json_values, st.just('{"n": 100000}')),
        "operationName": st.one_of(st.none(), st.text(max_size=5), json_values),
        "extensions": st.one_of(
            json_values,
            st.builds(
                lambda h: {"persistedQuery": {"sha256Hash": h}},
                st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
            ),
        ),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    operation_objects.map(lambda value: json.dumps(value).encode()),
    st.lists(operation_objects, max_size=4).map(lambda value: json.dumps(value).encode()),
    documents.map(str.encode),
    json_values.map(lambda value: json.dumps(value).encode()),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies,
    st.sampled_from(["POST", "GET", "HEAD", "OPTIONS", "PUT", "post"]),
    st.sampled_from(
        [
            "application/json",
            "application/graphql",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
            "",
            "application/json; charset=utf-8",
        ]
    ),
    st.one_of(
        st.just(""), st.text(max_size=60), documents.map(lambda d: "query=" + d.replace("&", "%26"))
    ),
    st.dictionaries(
        st.sampled_from(["content-length", "x-envoy-auth-partial-body"]),
        st.sampled_from(["", "12", "true", "99999999999999999999", "-1", "abc"]),
        max_size=2,
    ),
)
def test_random_requests_never_raise(
    body: bytes, method: str, content_type: str, query: str, headers: dict[str, str]
) -> None:
    for step in (STEP, SCHEMA_STEP):
        assert step is not None
        ctx = RequestContext(
            method=method,
            path="/graphql",
            raw_path="/graphql",
            query=query,
            host="h",
            headers={"content-type": content_type, **headers},
            body=body,
            source_ip="192.0.2.1",
            explain=True,
        )
        deny = step.evaluate(ctx, [])
        if deny is not None:
            assert deny.reason in (Reason.GRAPHQL_INVALID, Reason.GRAPHQL_TOO_COMPLEX)
            assert deny.extensions["code"] in ("GRAPHQL_INVALID", "GRAPHQL_TOO_COMPLEX")
            json.dumps(dict(deny.extensions))
        assert ctx.graphql_cost >= 0
        assert len(ctx.reports) == 1
