"""The GraphQL step: its contract with the engine, and the attack shapes of issue 6."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import pytest

from sidecar.graphql.analysis import clear_caches
from sidecar.model.policy import GraphQLSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import REASONS, Deny, Reason
from sidecar.steps.graphql import GraphQLStep, build_graphql_step
from tests.unit.graphql.graphql_examples import COMPLEX, SDL, SIMPLE

REPORT_KEYS = {
    "depth",
    "aliases",
    "rootFields",
    "directives",
    "tokens",
    "cost",
    "githubNodes",
    "githubPoints",
}


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    clear_caches()


def step(**spec: Any) -> GraphQLStep:
    built = build_graphql_step("shop/reviews", GraphQLSpec.model_validate(spec))
    assert built is not None
    return built


def request(
    body: bytes | str | object = b"",
    *,
    method: str = "POST",
    path: str = "/graphql",
    query: str = "",
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> RequestContext:
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode()
    all_headers = {"content-type": content_type, **(headers or {})}
    return RequestContext(
        method=method,
        path=path,
        raw_path=path + ("?" + query if query else ""),
        query=query,
        host="api.example.com",
        headers=all_headers,
        body=body,
        source_ip="192.0.2.7",
        explain=True,
    )


def run(graphql: GraphQLStep, ctx: RequestContext) -> tuple[Deny | None, dict[str, Any]]:
    deny = graphql.evaluate(ctx, [])
    assert len(ctx.reports) <= 1
    return deny, (ctx.reports[0].as_dict() if ctx.reports else {})


def too_complex(deny: Deny | None, rule: str) -> Deny:
    assert deny is not None
    assert deny.reason is Reason.GRAPHQL_TOO_COMPLEX
    assert deny.status == 400
    assert deny.rule == rule
    assert deny.extensions["code"] == "GRAPHQL_TOO_COMPLEX"
    return deny


def invalid(deny: Deny | None) -> Deny:
    assert deny is not None
    assert deny.reason is Reason.GRAPHQL_INVALID
    assert deny.status == 400
    assert deny.rule == "graphql"
    assert deny.extensions == {"code": "GRAPHQL_INVALID"}
    return deny


def test_graphql_denials_use_the_graphql_body() -> None:
    assert REASONS[Reason.GRAPHQL_INVALID].body == "graphql"
    assert REASONS[Reason.GRAPHQL_TOO_COMPLEX].body == "graphql"


def test_github_simple_query_is_allowed_and_explained() -> None:
    ctx = request({"query": SIMPLE})
    deny, report = run(step(), ctx)
    assert deny is None
    assert ctx.graphql_cost == 653
    assert report["step"] == "graphql"
    assert report["verdict"] == "allow"
    assert report.keys() >= REPORT_KEYS
    assert (report["githubNodes"], report["githubPoints"], report["cost"]) == (550, 1, 653)
    assert (report["depth"], report["aliases"], report["rootFields"]) == (8, 1, 1)


def test_cost_over_max_cost_is_refused_with_cost_and_max_cost() -> None:
    ctx = request({"query": COMPLEX})
    deny, report = run(step(), ctx)
    refused = too_complex(deny, "graphql.maxCost")
    assert refused.extensions == {
        "code": "GRAPHQL_TOO_COMPLEX",
        "limit": "maxCost",
        "cost": 26_265,
        "maxCost": 1000,
    }
    assert refused.detail == "The query costs 26265; the limit is 1000."
    assert report["verdict"] == "deny"
    assert report["rule"] == "graphql.maxCost"
    assert ctx.graphql_cost == 26_265  # known to a shadow-mode budget too


def test_other_paths_are_not_touched() -> None:
    ctx = request({"query": COMPLEX}, path="/rest/orders")
    assert step().evaluate(ctx, []) is None
    assert ctx.reports == []
    assert ctx.graphql_cost == 0


def test_path_patterns_and_normalised_paths() -> None:
    graphql = step(paths=["/api/*/graphql"])
    assert graphql.evaluate(request({"query": COMPLEX}, path="/api/v2/graphql"), []) is not None
    assert graphql.evaluate(request({"query": COMPLEX}, path="/graphql"), []) is None


def test_no_paths_builds_no_step() -> None:
    assert build_graphql_step("ns/p", GraphQLSpec.model_validate({"paths": []})) is None


def test_bad_schema_fails_the_build_with_a_useful_message() -> None:
    with pytest.raises(ValueError, match="line 1, column 17: Unknown type 'Nope'") as raised:
        build_graphql_step("ns/p", GraphQLSpec.model_validate({"schema": "type Query { a: Nope }"}))
    assert getattr(raised.value, "field_path", None) == "spec.graphql.schema"


def test_schema_is_compiled_once_and_used() -> None:
    graphql = step(schema=SDL)
    assert graphql.analyser.schema is not None
    ctx = request(
        {
            "query": 'query { search(query: "x", type: ISSUE, first: 10) { nodes { ... on Issue { author { login } } ... on PullRequest { commits(first: 5) { nodes { id } } } } } }'
        }
    )
    assert graphql.evaluate(ctx, []) is None
    assert ctx.graphql_cost == 2 + 10 * (1 + 7)


def test_nothing_to_analyse_is_skipped() -> None:
    ctx = request(method="GET")
    deny, report = run(step(), ctx)
    assert deny is None
    assert report == {
        "step": "graphql",
        "verdict": "skip",
        "reason": "no GraphQL operation in the request",
    }
    preflight = request(method="OPTIONS")
    assert step().evaluate(preflight, []) is None


def test_get_query_is_analysed() -> None:
    query = urlencode(
        {
            "query": "query ($n: Int) { repos(first: $n) { nodes { id } } }",
            "variables": '{"n": 500}',
        }
    )
    deny, report = run(step(), request(method="GET", query=query))
    refused = too_complex(deny, "graphql.maxListSize")
    assert refused.extensions["listSize"] == 500
    assert refused.extensions["maxListSize"] == 100
    assert report["verdict"] == "deny"


def test_application_graphql_body() -> None:
    ctx = request(SIMPLE, content_type="application/graphql")
    assert step().evaluate(ctx, []) is None
    assert ctx.graphql_cost == 653


# Body size.
def test_body_over_max_body_bytes() -> None:
    body = {"query": "{ a }", "padding": "x" * 200}
    deny, report = run(step(maxBodyBytes=100), request(body))
    refused = too_complex(deny, "graphql.maxBodyBytes")
    assert refused.extensions["maxBodyBytes"] == 100
    assert refused.extensions["bodyBytes"] == len(json.dumps(body))
    assert "cost" not in refused.extensions
    assert report["verdict"] == "deny"


def test_declared_content_length_counts() -> None:
    ctx = request({"query": "{ a }"}, headers={"content-length": "1000000"})
    too_complex(step().evaluate(ctx, []), "graphql.maxBodyBytes")


def test_a_body_envoy_truncated_is_over_the_limit() -> None:
    ctx = request({"query": "{ a }"}, headers={"x-envoy-auth-partial-body": "true"})
    too_complex(step().evaluate(ctx, []), "graphql.maxBodyBytes")


def test_long_get_query_string_counts() -> None:
    query = urlencode({"query": "{ " + "a " * 200 + "}"})
    too_complex(
        step(maxBodyBytes=100).evaluate(request(method="GET", query=query), []),
        "graphql.maxBodyBytes",
    )


# Invalid requests.
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        {"query": "{ a "},
        {"query": "query A { a }", "operationName": "B"},
        {"query": "query A { a } query B { b }"},
        {"query": "{ ...F } fragment F on Query { ...G } fragment G on Query { ...F }"},
        {"variables": {}},
        [],
    ],
)
def test_invalid_requests(body: object) -> None:
    deny, report = run(step(), request(body))
    invalid(deny)
    assert report["verdict"] == "deny"
    assert report.keys() >= REPORT_KEYS


def test_lone_surrogates_are_invalid_not_a_crash() -> None:
    invalid(step().evaluate(request(b'{"query": "{ a\\ud800 }"}'), []))
    invalid(step().evaluate(request(b'{"query": "{ \\ud800: a }"}'), []))


def test_syntax_error_message_reaches_the_client() -> None:
    deny = invalid(step().evaluate(request({"query": "{ viewer { login }"}), []))
    assert deny.detail.startswith("Syntax Error: Expected Name, found <EOF>.")


def test_persisted_query_round_trip() -> None:
    import hashlib

    query = "{ viewer { login } }"
    extensions = {
        "persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}
    }
    graphql = step()
    unknown = invalid(graphql.evaluate(request({"extensions": extensions}), []))
    assert unknown.detail == "PersistedQueryNotFound"
    assert graphql.evaluate(request({"query": query, "extensions": extensions}), []) is None
    replay = request({"extensions": extensions})
    assert graphql.evaluate(replay, []) is None
    assert replay.graphql_cost == 1


# Attack shapes (issue 6).
def test_deep_nesting() -> None:
    depth = 40
    query = "{" + "a {" * depth + "b" + "}" * depth + "}"
    deny = too_complex(step().evaluate(request({"query": query}), []), "graphql.maxDepth")
    assert (deny.extensions["depth"], deny.extensions["maxDepth"]) == (depth + 1, 12)


def test_nesting_past_the_parser_cap() -> None:
    depth = 500
    query = "{" + "a {" * depth + "b" + "}" * depth + "}"
    too_complex(step(maxTokens=10_000).evaluate(request({"query": query}), []), "graphql.maxDepth")


def test_schema_cycle_nesting_with_first_one() -> None:
    # Every cost model sees almost nothing here; depth stops it.
    inner = "owner { repositories(first: 1) { nodes { " * 5 + "name" + " } } }" * 5
    query = "{ viewer { " + inner + " } }"
    too_complex(step().evaluate(request({"query": query}), []), "graphql.maxDepth")


def test_a_thousand_aliases() -> None:
    query = "{ viewer { " + " ".join(f"a{i}: login" for i in range(1000)) + " } }"
    deny = too_complex(step().evaluate(request({"query": query}), []), "graphql.maxAliases")
    assert deny.extensions["aliases"] == 1000


def test_aliased_expensive_root_fields() -> None:
    field = "repositories(first: 100) { nodes { issues(first: 100) { nodes { title } } } }"
    query = "{ " + " ".join(f"r{i}: viewer {{ {field} }}" for i in range(51)) + " }"
    too_complex(step().evaluate(request({"query": query}), []), "graphql.maxAliases")
    too_complex(
        step(maxAliases=100).evaluate(request({"query": query}), []), "graphql.maxRootFields"
    )
    ten = "{ " + " ".join(f"r{i}: viewer {{ {field} }}" for i in range(10)) + " }"
    too_complex(step().evaluate(request({"query": ten}), []), "graphql.maxCost")


def test_field_duplication() -> None:
    # Merged at execution: 1,000 copies of a leaf cost nothing, and fit in maxTokens...
    thousand = "{ viewer { " + "login " * 1000 + "} }"
    ctx = request({"query": thousand})
    assert step().evaluate(ctx, []) is None
    assert ctx.graphql_cost == 1
    # ...but the token limit bounds how many a request can carry.
    many = "{ viewer { " + "login " * 6000 + "} }"
    too_complex(step().evaluate(request({"query": many}), []), "graphql.maxTokens")
    # Duplicated objects are each charged.
    objects = "{ viewer { " + "followers(first: 100) { nodes { login } } " * 10 + "} }"
    too_complex(step().evaluate(request({"query": objects}), []), "graphql.maxCost")


def test_huge_batch() -> None:
    batch = [{"query": "{ viewer { login } }"} for _ in range(1000)]
    deny = too_complex(step().evaluate(request(batch), []), "graphql.maxTokens")
    assert deny.extensions["tokens"] == 1000 * 6
    assert deny.detail == "The batch has 6000 tokens; the limit is 5000."
    too_complex(step().evaluate(request(batch * 3), []), "graphql.maxBodyBytes")
    small_but_costly = [{"query": "{ viewer { followers(first: 100) { nodes { login } } } }"}] * 10
    deny = too_complex(step().evaluate(request(small_but_costly), []), "graphql.maxCost")
    assert deny.extensions["cost"] == 10 * 103
    assert deny.detail == "The batch costs 1030; the limit is 1000."


def test_batch_reports_totals() -> None:
    ctx = request([{"query": SIMPLE}, {"query": "{ viewer { login } }"}])
    deny, report = run(step(), ctx)
    assert deny is None
    assert (
        report["cost"],
        report["operations"],
        report["githubNodes"],
        report["githubPoints"],
    ) == (654, 2, 550, 2)
    assert ctx.graphql_cost == 654


def test_batch_with_one_bad_operation() -> None:
    batch = [{"query": "{ a }"}, {"query": "{ a(first: 1000) { b } }"}]
    deny = too_complex(step().evaluate(request(batch), []), "graphql.maxListSize")
    assert deny.detail.startswith("Operation 2 of the batch:")


def test_circular_fragments() -> None:
    query = "{ viewer { ...A } } fragment A on User { followers(first: 2) { nodes { ...B } } } fragment B on User { ...A }"
    deny = invalid(step().evaluate(request({"query": query}), []))
    assert "cycle" in deny.detail
    assert "A -> B -> A" in deny.detail


def test_directive_flood() -> None:
    query = (
        "{ viewer { "
        + " ".join(f"f{i}: login @skip(if: false)" for i in range(12))
        + " login"
        + " @include(if: true)" * 60
        + " } }"
    )
    deny = too_complex(
        step(maxAliases=100).evaluate(request({"query": query}), []), "graphql.maxDirectives"
    )
    assert deny.extensions["directives"] == 72


def test_ten_thousand_token_document() -> None:
    query = "{ viewer { " + "login " * 10_000 + "} }"
    deny = too_complex(step().evaluate(request({"query": query}), []), "graphql.maxTokens")
    assert deny.extensions == {
        "code": "GRAPHQL_TOO_COMPLEX",
        "limit": "maxTokens",
        "tokens": 5001,
        "maxTokens": 5000,
    }


def test_first_one_hundred_thousand() -> None:
    query = "{ viewer { repositories(first: 100000) { nodes { name } } } }"
    ctx = request({"query": query})
    deny, report = run(step(), ctx)
    refused = too_complex(deny, "graphql.maxListSize")
    assert refused.extensions == {
        "code": "GRAPHQL_TOO_COMPLEX",
        "limit": "maxListSize",
        "listSize": 100000,
        "maxListSize": 100,
        "cost": 100_003,
        "maxCost": 1000,
    }
    assert refused.detail == "repositories(first: 100000) asks for more than 100 items."
    assert report["cost"] == 100_003
    assert report["githubNodes"] == 100_000


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (
            "query ($n: Int!) { viewer { repositories(first: $n) { nodes { name } } } }",
            {"n": 100000},
        ),
        ("query ($n: Int = 100000) { viewer { repositories(first: $n) { nodes { name } } } }", {}),
        (
            "query ($n: Int = 100000) { viewer { repositories(first: $n) { nodes { name } } } }",
            None,
        ),
        ("query ($n: Int) { viewer { repositories(last: $n) { nodes { name } } } }", {"n": 1e5}),
        (
            "query ($n: Int) { viewer { repositories(first: $n) { nodes { name } } } }",
            {"n": "100000"},
        ),
        (
            "query ($n: Int) { viewer { ...R } } fragment R on User { repositories(first: $n) { nodes { name } } }",
            {"n": 100000},
        ),
    ],
)
def test_variables_smuggling_large_first(query: str, variables: dict[str, object] | None) -> None:
    body: dict[str, object] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    too_complex(step().evaluate(request(body), []), "graphql.maxListSize")


def test_smuggling_after_a_cached_small_request() -> None:
    graphql = step()
    query = "query ($n: Int) { viewer { repositories(first: $n) { nodes { name } } } }"
    assert graphql.evaluate(request({"query": query, "variables": {"n": 10}}), []) is None
    too_complex(
        graphql.evaluate(request({"query": query, "variables": {"n": 100000}}), []),
        "graphql.maxListSize",
    )


def test_introspection_denied() -> None:
    ctx = request({"query": "{ __schema { types { name } } }"})
    deny, report = run(step(introspection="deny"), ctx)
    refused = too_complex(deny, "graphql.introspection")
    assert refused.detail == "Introspection is disabled."
    assert report["verdict"] == "deny"


def test_introspection_bomb_with_introspection_allowed() -> None:
    query = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
    too_complex(step().evaluate(request({"query": query}), []), "graphql.introspection")


STANDARD_INTROSPECTION = """
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"""


def test_standard_introspection_query_passes_when_allowed() -> None:
    ctx = request({"query": STANDARD_INTROSPECTION, "operationName": "IntrospectionQuery"})
    deny, report = run(step(), ctx)
    assert deny is None
    assert report["cost"] == 0


def test_repeated_requests_are_answered_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    graphql = step()
    body = {"query": SIMPLE}
    first = request(body)
    graphql.evaluate(first, [])

    def no_reading(*args: object) -> object:
        raise AssertionError("the request should have come from the cache")

    monkeypatch.setattr("sidecar.steps.graphql.read_request", no_reading)
    again = request(body)
    assert graphql.evaluate(again, []) is None
    assert again.graphql_cost == 653
    assert again.reports[0].as_dict() == first.reports[0].as_dict()


def test_no_report_without_explain() -> None:
    ctx = request({"query": SIMPLE})
    ctx.explain = False
    assert step().evaluate(ctx, []) is None
    assert ctx.reports == []
    assert ctx.graphql_cost == 653


def test_an_unexpected_failure_is_an_invalid_request_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr("sidecar.steps.graphql.read_request", broken)
    invalid(step().evaluate(request({"query": "{ a }"}), []))


def test_settle_has_nothing_to_do() -> None:
    assert step().settle(request(), []) is None
    assert step().name == "graphql"
