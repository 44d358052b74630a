"""The cached entry point, limits in order, and batches."""

from __future__ import annotations

import pytest

from sidecar.graphql import analysis as analysis_module
from sidecar.graphql.analysis import Analyser, clear_caches, combine
from sidecar.graphql.limits import Limits
from sidecar.graphql.lru import LRUCache
from sidecar.graphql.outcome import Measurements
from sidecar.graphql.request import OperationRequest
from sidecar.model.policy import GraphQLSpec

QUERY = "query Q($n: Int, $id: ID) { node(id: $id) { id } repos(first: $n) { nodes { name } } }"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    clear_caches()


def count_uncached(analyser: Analyser, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = Analyser.analyse_uncached

    def counting(self: Analyser, *args: object) -> object:
        calls[0] += 1
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Analyser, "analyse_uncached", counting)
    return calls


def test_limits_from_spec_are_the_contract_defaults() -> None:
    assert Limits.from_spec(GraphQLSpec()) == Limits()
    denied = Limits.from_spec(GraphQLSpec.model_validate({"introspection": "deny", "maxCost": 7}))
    assert (denied.introspection_allowed, denied.max_cost) == (False, 7)


def test_repeated_operation_is_answered_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    analyser = Analyser(Limits())
    calls = count_uncached(analyser, monkeypatch)
    first = analyser.analyse(QUERY, {"n": 10, "id": "a"}, "Q")
    again = analyser.analyse(QUERY, {"n": 10, "id": "b"}, "Q")  # id does not size a list
    assert again is first
    assert calls[0] == 1


def test_variables_that_size_lists_are_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    analyser = Analyser(Limits())
    calls = count_uncached(analyser, monkeypatch)
    small = analyser.analyse(QUERY, {"n": 10}, "Q")
    large = analyser.analyse(QUERY, {"n": 100000}, "Q")
    missing = analyser.analyse(QUERY, {}, "Q")
    null = analyser.analyse(QUERY, {"n": None}, "Q")
    assert small.allowed
    assert not large.allowed
    assert large.problem is not None
    assert large.problem.limit == "maxListSize"
    assert (small.measurements.cost, missing.measurements.cost) == (1 + 12, 1 + 12)
    assert null.measurements.cost == 1 + 12
    assert calls[0] == 4
    assert analyser.analyse(QUERY, {"n": 100000.0}, "Q") is large  # same size, same key
    assert calls[0] == 4


def test_operation_name_is_part_of_the_key() -> None:
    analyser = Analyser(Limits())
    text = "query A { a } query B { b(first: 500) { x } }"
    assert analyser.analyse(text, None, "A").allowed
    assert not analyser.analyse(text, None, "B").allowed


def test_policies_do_not_share_results() -> None:
    strict = Analyser(Limits(max_cost=5))
    lenient = Analyser(Limits(max_cost=5000))
    query = "{ repos(first: 50) { nodes { name } } }"
    assert lenient.analyse(query).allowed
    assert not strict.analyse(query).allowed


def test_cached_and_uncached_agree() -> None:
    analyser = Analyser(Limits())
    for variables in ({"n": 3}, {"n": 300}, None):
        cached = analyser.analyse(QUERY, variables, "Q")
        fresh, _ = analyser.analyse_uncached(QUERY, variables, "Q")
        assert cached == fresh


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis_module, "_results", LRUCache(4))
    monkeypatch.setattr(analysis_module, "_slicing_variables", LRUCache(4))
    analyser = Analyser(Limits())
    for index in range(50):
        analyser.analyse(f"{{ field{index} }}")
    assert len(analysis_module._results) == 4


@pytest.mark.parametrize(
    ("limits", "query", "limit", "observed"),
    [
        (Limits(max_depth=2), "{ a { b { c } } }", "maxDepth", 3),
        (Limits(max_aliases=1), "{ x: a y: b }", "maxAliases", 2),
        (Limits(max_root_fields=2), "{ a b c }", "maxRootFields", 3),
        (Limits(max_directives=1), "{ a @x b @y }", "maxDirectives", 2),
        (Limits(max_list_size=10), "{ a(first: 11) { b } }", "maxListSize", 11),
        (Limits(max_cost=10), "{ a(first: 9) { nodes { b } } }", "maxCost", 11),
        (Limits(max_tokens=4), "{ a b c }", "maxTokens", 5),
    ],
)
def test_each_limit(limits: Limits, query: str, limit: str, observed: int) -> None:
    problem = Analyser(limits).analyse(query).problem
    assert problem is not None
    assert (problem.kind, problem.limit, problem.observed) == ("too_complex", limit, observed)


def test_limits_are_inclusive() -> None:
    limits = Limits(
        max_depth=3,
        max_aliases=2,
        max_root_fields=2,
        max_directives=2,
        max_list_size=9,
        max_cost=12,
    )
    assert (
        Analyser(limits).analyse("{ x: a(first: 9) @d { nodes { name } } y: b @e { c } }").allowed
    )


def test_structural_limits_come_before_cost() -> None:
    problem = (
        Analyser(Limits(max_depth=2, max_cost=1))
        .analyse("{ a(first: 50) { nodes { x } } }")
        .problem
    )
    assert problem is not None
    assert problem.limit == "maxDepth"
    assert problem.measured


def test_introspection_deny() -> None:
    denying = Analyser(Limits(introspection_allowed=False))
    problem = denying.analyse('{ __type(name: "User") { name } }').problem
    assert problem is not None
    assert problem.limit == "introspection"
    assert denying.analyse("{ __typename }").allowed


def test_standard_introspection_depth_is_exempt() -> None:
    query = "{ __schema { types { ...T } } } fragment T on __Type { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } }"
    assert Analyser(Limits(max_depth=3)).analyse(query).allowed


def test_syntax_errors_and_unknown_operations_are_invalid() -> None:
    analyser = Analyser(Limits())
    for query, name in (
        ("{ a", None),
        ("query A { a }", "B"),
        ("{ ...F } fragment F on Q { ...F }", None),
    ):
        problem = analyser.analyse(query, None, name).problem
        assert problem is not None
        assert problem.kind == "invalid"
        assert not problem.measured


def test_nesting_beyond_the_parser_reports_the_policy_limit() -> None:
    query = "{" + "a {" * 300 + "b" + "}" * 300 + "}"
    problem = Analyser(Limits(max_tokens=10_000)).analyse(query).problem
    assert problem is not None
    assert (problem.limit, problem.maximum) == ("maxDepth", 12)


def test_batch_each_operation_on_its_own() -> None:
    analyser = Analyser(Limits(max_depth=2))
    operations = [OperationRequest("{ a }"), OperationRequest("{ a { b { c } } }")]
    problem = analyser.analyse_operations(operations).problem
    assert problem is not None
    assert problem.limit == "maxDepth"
    assert problem.message.startswith("Operation 2 of the batch:")


def test_batch_cost_is_summed() -> None:
    analyser = Analyser(Limits(max_cost=100))
    one = OperationRequest("{ repos(first: 40) { nodes { name } } }")  # 42
    assert analyser.analyse_operations([one, one]).allowed
    result = analyser.analyse_operations([one, one, one])
    assert result.problem is not None
    assert (result.problem.limit, result.problem.observed) == ("maxCost", 126)
    assert result.measurements.operations == 3


def test_batch_tokens_are_summed() -> None:
    analyser = Analyser(Limits(max_tokens=10))
    operation = OperationRequest("{ a b c }")  # 5 tokens
    assert analyser.analyse_operations([operation, operation]).allowed
    problem = analyser.analyse_operations([operation] * 3).problem
    assert problem is not None
    assert problem.limit == "maxTokens"


def test_batch_measurements_combine() -> None:
    first = Measurements(
        depth=3,
        aliases=1,
        root_fields=2,
        directives=4,
        tokens=10,
        cost=5,
        github_nodes=6,
        github_points=1,
        max_list_size=7,
    )
    second = Measurements(
        depth=1,
        aliases=2,
        root_fields=1,
        directives=0,
        tokens=20,
        cost=7,
        github_nodes=1,
        github_points=2,
        max_list_size=3,
        introspection=True,
    )
    total = combine(combine(Measurements(operations=0), first), second)
    assert total == Measurements(
        depth=3,
        aliases=2,
        root_fields=2,
        directives=4,
        tokens=30,
        cost=12,
        github_nodes=7,
        github_points=3,
        max_list_size=7,
        introspection=True,
        operations=2,
    )
