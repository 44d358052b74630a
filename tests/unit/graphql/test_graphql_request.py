"""Reading operations out of HTTP requests."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlencode

import pytest

from sidecar.graphql.outcome import Problem
from sidecar.graphql.request import (
    PERSISTED_QUERY_NOT_FOUND,
    GraphQLRequest,
    OperationRequest,
    PersistedQueries,
    content_kind,
    read_request,
)


def read(
    body: bytes = b"",
    *,
    method: str = "POST",
    content_type: str = "application/json",
    url: str = "",
    persisted: PersistedQueries | None = None,
) -> GraphQLRequest | Problem | None:
    return read_request(
        method,
        content_kind(content_type),
        body,
        parse_qs(url, keep_blank_values=True),
        persisted if persisted is not None else PersistedQueries(),
    )


def ok(result: GraphQLRequest | Problem | None) -> GraphQLRequest:
    assert isinstance(result, GraphQLRequest), result
    return result


def refused(result: GraphQLRequest | Problem | None) -> str:
    assert isinstance(result, Problem), result
    assert result.kind == "invalid"
    return result.message


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", "json"),
        ("Application/JSON; charset=utf-8", "json"),
        ("application/graphql-response+json", "json"),
        ("application/graphql", "graphql"),
        ("application/x-www-form-urlencoded", "form"),
        ("multipart/form-data; boundary=x", "multipart"),
        ("text/plain", "other"),
        ("", "other"),
    ],
)
def test_content_kinds(content_type: str, kind: str) -> None:
    assert content_kind(content_type) == kind


def test_json_operation() -> None:
    body = json.dumps({"query": "{ a }", "variables": {"n": 1}, "operationName": "Q"}).encode()
    request = ok(read(body))
    assert request.operations == (OperationRequest("{ a }", {"n": 1}, "Q"),)
    assert not request.batched
    assert request.cacheable


def test_json_variables_may_be_a_json_string_and_names_may_be_null() -> None:
    body = json.dumps({"query": "{ a }", "variables": '{"n": 2}', "operationName": None}).encode()
    assert ok(read(body)).operations[0] == OperationRequest("{ a }", {"n": 2}, None)
    empty_name = json.dumps({"query": "{ a }", "operationName": ""}).encode()
    assert ok(read(empty_name)).operations[0].operation_name is None


def test_batch() -> None:
    body = json.dumps([{"query": "{ a }"}, {"query": "{ b }", "variables": None}]).encode()
    request = ok(read(body))
    assert request.batched
    assert [operation.query for operation in request.operations] == ["{ a }", "{ b }"]


def test_raw_graphql_body_with_url_variables() -> None:
    url = urlencode({"variables": '{"n": 3}', "operationName": "Q"})
    request = ok(read(b"query Q { a }", content_type="application/graphql", url=url))
    assert request.operations == (OperationRequest("query Q { a }", {"n": 3}, "Q"),)


def test_form_body() -> None:
    body = urlencode({"query": "{ a }", "variables": '{"n": 4}'}).encode()
    request = ok(read(body, content_type="application/x-www-form-urlencoded"))
    assert request.operations == (OperationRequest("{ a }", {"n": 4}, None),)


def test_get_with_query() -> None:
    url = urlencode({"query": "{ a }", "variables": '{"n": 5}', "operationName": "Q"})
    request = ok(read(method="GET", url=url))
    assert request.operations == (OperationRequest("{ a }", {"n": 5}, "Q"),)


def test_a_get_body_is_read_too() -> None:
    request = ok(read(b'{"query": "{ a }"}', method="GET"))
    assert request.operations[0].query == "{ a }"
    assert "not both" in refused(read(b'{"query": "{ a }"}', method="GET", url="query=%7Bb%7D"))


def test_head_is_read_like_get() -> None:
    assert ok(read(method="HEAD", url="query=%7Ba%7D")).operations[0].query == "{a}"


@pytest.mark.parametrize("method", ["GET", "OPTIONS"])
def test_nothing_to_analyse(method: str) -> None:
    assert read(method=method) is None


def test_post_with_an_empty_body_may_carry_the_query_in_the_url() -> None:
    assert ok(read(b"", url="query=%7Ba%7D")).operations[0].query == "{a}"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'  {"query": "{ sniffed }"}', "text/plain"),
        (b'[{"query": "{ sniffed }"}]', ""),
        (b"{ sniffed }", "text/plain"),
        (b"query { sniffed }", ""),
        (b"{ sniffed(first: 1) }", "text/plain"),
    ],
)
def test_unknown_content_types_are_sniffed(body: bytes, content_type: str) -> None:
    request = ok(read(body, content_type=content_type))
    assert "sniffed" in request.operations[0].query


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"body": b""}, "no body"),
        ({"body": b"   \n"}, "no body"),
        ({"body": b"{not json"}, "not valid JSON"),
        ({"body": b"[" * 100_000}, "not valid JSON"),
        ({"body": b"[]"}, "batch is empty"),
        ({"body": b"[1, 2]"}, "must be a JSON object"),
        ({"body": b'"{ a }"'}, "must be a JSON object"),
        ({"body": b"{}"}, "has no query"),
        ({"body": b'{"query": 5}'}, "query must be a string"),
        ({"body": b'{"query": "{ a }", "variables": [1]}'}, "variables must be a JSON object"),
        ({"body": b'{"query": "{ a }", "variables": "{bad"}'}, "variables is not valid JSON"),
        ({"body": b'{"query": "{ a }", "operationName": 3}'}, "operationName must be a string"),
        ({"body": b'{"query": "{ a }"}', "url": "query=%7Bb%7D"}, "not both"),
        ({"body": b"\xff\xfe{ a }", "content_type": "application/graphql"}, "not UTF-8"),
        ({"body": b"query=\xff", "content_type": "application/x-www-form-urlencoded"}, "not UTF-8"),
        ({"body": b"--x\r\n", "content_type": "multipart/form-data; boundary=x"}, "not supported"),
        ({"method": "GET", "url": "query=a&query=b"}, "more than once"),
        ({"method": "GET", "url": "query=%7Ba%7D&variables=%7B"}, "'variables' is not valid JSON"),
    ],
)
def test_unreadable_requests_are_invalid(kwargs: dict[str, object], message: str) -> None:
    assert message in refused(read(**kwargs))  # type: ignore[arg-type]


QUERY = "{ viewer { login } }"
HASH = hashlib.sha256(QUERY.encode()).hexdigest()


def persisted_body(query: str | None, sha256_hex: str = HASH) -> bytes:
    payload: dict[str, object] = {
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256_hex}}
    }
    if query is not None:
        payload["query"] = query
    return json.dumps(payload).encode()


def test_persisted_query_unknown_hash_asks_the_client_for_the_query() -> None:
    assert refused(read(persisted_body(None))) == PERSISTED_QUERY_NOT_FOUND


def test_persisted_query_is_learnt_from_a_verified_request() -> None:
    registry = PersistedQueries()
    registering = ok(read(persisted_body(QUERY), persisted=registry))
    assert not registering.cacheable
    replay = ok(read(persisted_body(None), persisted=registry))
    assert replay.operations[0].query == QUERY
    assert not replay.cacheable
    via_get = urlencode(
        {"extensions": json.dumps({"persistedQuery": {"sha256Hash": HASH.upper()}})}
    )
    assert ok(read(method="GET", url=via_get, persisted=registry)).operations[0].query == QUERY


def test_persisted_query_with_a_wrong_hash_is_not_learnt() -> None:
    registry = PersistedQueries()
    other = "{ somethingExpensive }"
    # The query is analysed, but the hash must not map to it.
    assert ok(read(persisted_body(other), persisted=registry)).operations[0].query == other
    assert refused(read(persisted_body(None), persisted=registry)) == PERSISTED_QUERY_NOT_FOUND


def test_persisted_queries_are_bounded() -> None:
    queries = [f"{{ field{i} }}" for i in range(5)]
    registry = PersistedQueries(max_entries=3)
    for query in queries:
        registry.remember(hashlib.sha256(query.encode()).hexdigest(), query)
    assert registry.lookup(hashlib.sha256(queries[0].encode()).hexdigest()) is None
    assert registry.lookup(hashlib.sha256(queries[4].encode()).hexdigest()) == queries[4]
    small = PersistedQueries(max_bytes=20)
    big = "{ " + "x " * 20 + "}"
    small.remember(hashlib.sha256(big.encode()).hexdigest(), big)
    assert small.lookup(hashlib.sha256(big.encode()).hexdigest()) is None
