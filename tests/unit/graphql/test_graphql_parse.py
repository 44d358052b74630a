"""Bounded parsing and the operation/fragment checks every GraphQL server makes."""

from __future__ import annotations

import pytest
from graphql.language import OperationDefinitionNode

from sidecar.graphql.outcome import Problem
from sidecar.graphql.parse import (
    MAX_NESTING_DEPTH,
    ParsedDocument,
    PreparedOperation,
    parse_document,
    prepare,
)


def parsed(text: str, max_tokens: int = 5000) -> ParsedDocument:
    result = parse_document(text, max_tokens)
    assert isinstance(result, ParsedDocument), result
    return result


def prepared(text: str, operation_name: str | None = None) -> PreparedOperation:
    result = prepare(parsed(text, max_tokens=100_000).document, operation_name)
    assert isinstance(result, PreparedOperation), result
    return result


def problem(text: str, operation_name: str | None = None) -> Problem:
    result = prepare(parsed(text, max_tokens=100_000).document, operation_name)
    assert isinstance(result, Problem), result
    return result


def test_counts_every_lexical_token() -> None:
    # { viewer { login } }: 4 braces and 2 names
    assert parsed("{ viewer { login } }").tokens == 6
    # query Q($n: Int) { a(first: $n) } = query Q ( $ n : Int ) { a ( first : $ n ) }
    assert parsed("query Q($n: Int) { a(first: $n) }").tokens == 17


def test_comments_count_as_tokens() -> None:
    assert parsed("# hello\n{ a }").tokens == 4


def test_token_limit_aborts_while_lexing() -> None:
    document = "{ " + "a " * 10_000 + "}"
    result = parse_document(document, 5000)
    assert isinstance(result, Problem)
    assert (result.kind, result.limit, result.measure) == ("too_complex", "maxTokens", "tokens")
    assert (result.observed, result.maximum) == (5001, 5000)


def test_token_limit_applies_to_comment_floods() -> None:
    document = "#\n" * 10_000 + "{ a }"
    result = parse_document(document, 5000)
    assert isinstance(result, Problem)
    assert result.limit == "maxTokens"


def test_exactly_the_limit_is_accepted() -> None:
    assert parsed("{ a }", max_tokens=3).tokens == 3
    over = parse_document("{ a b }", 3)
    assert isinstance(over, Problem)
    assert over.limit == "maxTokens"


def test_nesting_beyond_the_parser_cap_is_too_complex_not_a_crash() -> None:
    depth = MAX_NESTING_DEPTH + 50
    document = "{" + "a {" * depth + "b" + "}" * depth + "}"
    result = parse_document(document, 100_000)
    assert isinstance(result, Problem)
    assert (result.kind, result.limit) == ("too_complex", "maxDepth")
    assert result.observed == MAX_NESTING_DEPTH + 1


def test_syntax_errors_are_invalid_and_say_where() -> None:
    result = parse_document("{ viewer { login }", 5000)
    assert isinstance(result, Problem)
    assert result.kind == "invalid"
    assert result.message.startswith("Syntax Error")
    assert "(line 1, column 19)" in result.message


def test_empty_document_is_invalid() -> None:
    result = parse_document("   ", 5000)
    assert isinstance(result, Problem)
    assert result.kind == "invalid"


def test_selects_the_only_operation() -> None:
    operation = prepared("query A { a }").operation
    assert isinstance(operation, OperationDefinitionNode)
    assert operation.name is not None
    assert operation.name.value == "A"


def test_selects_by_operation_name() -> None:
    operation = prepared("query A { a } query B { b }", "B").operation
    assert operation.name is not None
    assert operation.name.value == "B"


@pytest.mark.parametrize(
    ("text", "operation_name", "fragment"),
    [
        ("query A { a } query B { b }", None, "operationName is required"),
        ("query A { a }", "B", 'Unknown operation named "B"'),
        ("{ a }", "A", 'Unknown operation named "A"'),
        ("{ a } { b }", None, "anonymous operation must be the only"),
        ("query A { a } query A { b }", "A", 'only one operation named "A"'),
        ("fragment F on T { a }", None, "no operation"),
        ("{ a } type T { a: Int }", None, "only operations and fragments"),
        ("{ ...F } fragment F on T { a } fragment F on T { b }", None, 'one fragment named "F"'),
        ("{ ...Missing }", None, 'Unknown fragment "Missing"'),
        ("{ ...F } fragment F on T { ...G }", None, 'Unknown fragment "G" in fragment "F"'),
    ],
)
def test_invalid_documents(text: str, operation_name: str | None, fragment: str) -> None:
    result = problem(text, operation_name)
    assert result.kind == "invalid"
    assert fragment in result.message


@pytest.mark.parametrize(
    ("text", "cycle"),
    [
        ("{ ...F } fragment F on T { ...F }", "F -> F"),
        ("{ ...F } fragment F on T { a { ...G } } fragment G on T { ...F }", "F -> G -> F"),
        # A cycle in a fragment the operation does not use still makes the document invalid.
        ("{ a } fragment F on T { ...G } fragment G on T { b { ...F } }", "F -> G -> F"),
        (
            "{ ...A } fragment A on T { ...B } fragment B on T { ...C } fragment C on T { x { ...B } }",
            "B -> C -> B",
        ),
    ],
)
def test_fragment_cycles_are_invalid(text: str, cycle: str) -> None:
    result = problem(text)
    assert result.kind == "invalid"
    assert cycle in result.message


def test_fragments_come_after_the_fragments_they_spread() -> None:
    text = """
    { ...A ...C }
    fragment A on T { ...B x { ...C } }
    fragment B on T { ...C }
    fragment C on T { c }
    fragment Unused on T { u }
    """
    order = prepared(text).order
    assert order.index("C") < order.index("B") < order.index("A")
    assert "Unused" not in order
    assert len(order) == 3


def test_a_long_fragment_chain_needs_no_deep_recursion() -> None:
    count = 3000
    fragments = " ".join(f"fragment F{i} on T {{ ...F{i + 1} }}" for i in range(count))
    text = "{ ...F0 } " + fragments + f" fragment F{count} on T {{ leaf }}"
    assert len(prepared(text).order) == count + 1
    cyclic = "{ ...F0 } " + fragments + f" fragment F{count} on T {{ ...F0 }}"
    assert problem(cyclic).kind == "invalid"
