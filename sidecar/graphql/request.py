"""Reading the GraphQL operations out of an HTTP request, the way servers do.

Accepted shapes (GraphQL over HTTP, and what popular servers also take):

- ``POST`` with a JSON body ``{"query", "variables", "operationName"}`` or a
  JSON array of those (a batch);
- ``POST`` with ``Content-Type: application/graphql`` (the body is the
  document; ``variables``/``operationName`` may be URL parameters);
- ``POST`` with ``application/x-www-form-urlencoded`` fields;
- ``GET``/``HEAD`` with ``?query=`` (and ``variables`` as JSON, ``operationName``),
  or with a body, read like a ``POST``'s;
- Apollo's automatic persisted queries: a hash without a query is analysed when
  this process has already seen (and checked) the query for that hash; else the
  client is told ``PersistedQueryNotFound`` and sends the full query.

Anything the sidecar cannot read with certainty is refused as invalid rather
than let through unchecked: a body whose type is unknown is read as JSON when it
looks like JSON and as a document otherwise; file uploads (multipart) are
refused; a request that carries a query in both the URL and the body is refused
(servers disagree on which one wins).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from sidecar.graphql.outcome import Problem

PERSISTED_QUERY_NOT_FOUND = "PersistedQueryNotFound"  # what Apollo clients look for

_JSON_START = (b"{", b"[")
_NOT_JSON = "The request body is not valid JSON."


@dataclass(frozen=True, slots=True)
class OperationRequest:
    query: str
    variables: Mapping[str, object] | None = None
    operation_name: str | None = None


@dataclass(frozen=True, slots=True)
class GraphQLRequest:
    operations: tuple[OperationRequest, ...]
    batched: bool = False
    # False when the request uses the persisted-query registry (its outcome, and
    # the registry's contents, must not be taken from a cache of request bytes).
    cacheable: bool = True


class PersistedQueries:
    """Query texts by SHA-256, learnt from requests that sent both (verified).

    Bounded in entries and in bytes; a forgotten hash only costs the client one
    round trip to send its query again.
    """

    __slots__ = ("_bytes", "_entries", "_lock", "_max_bytes", "_max_entries")

    def __init__(self, max_entries: int = 2048, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def remember(self, sha256_hex: str, query: str) -> None:
        key = sha256_hex.lower()
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
        encoded = query.encode("utf-8", "surrogatepass")
        if len(encoded) > self._max_bytes or hashlib.sha256(encoded).hexdigest() != key:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = query
            self._bytes += len(encoded)
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.encode("utf-8", "surrogatepass"))

    def lookup(self, sha256_hex: str) -> str | None:
        key = sha256_hex.lower()
        with self._lock:
            query = self._entries.get(key)
            if query is not None:
                self._entries.move_to_end(key)
            return query


def _invalid(message: str) -> Problem:
    return Problem("invalid", "", message)


def content_kind(content_type: str) -> str:
    """``json`` | ``graphql`` | ``form`` | ``multipart`` | ``other``."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "application/graphql":
        return "graphql"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.startswith("multipart/"):
        return "multipart"
    return "other"


def read_request(
    method: str,
    kind: str,
    body: bytes,
    url_params: Mapping[str, list[str]],
    persisted: PersistedQueries,
) -> GraphQLRequest | Problem | None:
    """The operations a request asks to run; None when it asks for none (a GraphiQL
    page, a CORS preflight), a Problem when it cannot be read with certainty."""
    if method == "OPTIONS":
        return None
    if not body.strip():
        if "query" in url_params or "extensions" in url_params:
            return _from_params(url_params, persisted)
        if method in ("GET", "HEAD"):
            return None
        return _invalid("The request has no body: send a GraphQL operation.")
    # A body is read whatever the method: some servers run the body of a GET too.
    if "query" in url_params:
        return _invalid("Send the query either in the URL or in the body of the request, not both.")
    if kind == "multipart":
        return _invalid("multipart requests (file uploads) are not supported on this endpoint.")
    if kind == "form":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return _invalid("The form body is not UTF-8.")
        return _from_params(form, persisted)
    if kind == "other":
        # Unknown type: JSON if it reads as JSON, else a document (`{ a }` is both-looking).
        if body.lstrip()[:1] in _JSON_START:
            sniffed = _from_json(body, persisted)
            if not isinstance(sniffed, Problem) or sniffed.message != _NOT_JSON:
                return sniffed
        kind = "graphql"
    if kind == "graphql":
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            return _invalid("The GraphQL document is not UTF-8.")
        return _from_params({**url_params, "query": [text]}, persisted)
    return _from_json(body, persisted)


def _from_json(body: bytes, persisted: PersistedQueries) -> GraphQLRequest | Problem:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return _invalid(_NOT_JSON)
    if isinstance(payload, list):
        if not payload:
            return _invalid("The batch is empty.")
        operations: list[OperationRequest] = []
        cacheable = True
        for item in payload:
            read = _from_object(item, persisted)
            if isinstance(read, Problem):
                return read
            operation, uses_registry = read
            cacheable = cacheable and not uses_registry
            operations.append(operation)
        return GraphQLRequest(tuple(operations), batched=True, cacheable=cacheable)
    read = _from_object(payload, persisted)
    if isinstance(read, Problem):
        return read
    operation, uses_registry = read
    return GraphQLRequest((operation,), cacheable=not uses_registry)


def _from_params(
    params: Mapping[str, list[str]], persisted: PersistedQueries
) -> GraphQLRequest | Problem:
    single: dict[str, str | None] = {}
    for name in ("query", "variables", "operationName", "extensions"):
        values = params.get(name)
        if values is not None and len(values) > 1:
            return _invalid(f"The parameter {name!r} is given more than once.")
        single[name] = values[0] if values else None
    fields: dict[str, object] = {"query": single["query"]}
    for name in ("variables", "extensions"):
        text = single[name]
        if text:
            try:
                fields[name] = json.loads(text)
            except (ValueError, RecursionError):
                return _invalid(f"The parameter {name!r} is not valid JSON.")
    if single["operationName"]:
        fields["operationName"] = single["operationName"]
    read = _from_object(fields, persisted)
    if isinstance(read, Problem):
        return read
    operation, uses_registry = read
    return GraphQLRequest((operation,), cacheable=not uses_registry)


def _from_object(
    payload: object, persisted: PersistedQueries
) -> tuple[OperationRequest, bool] | Problem:
    """One operation object; the flag says whether it uses the persisted-query registry."""
    if not isinstance(payload, dict):
        return _invalid("Each operation must be a JSON object.")
    variables = payload.get("variables")
    if isinstance(variables, str):  # some clients send the variables JSON-encoded
        try:
            variables = json.loads(variables) if variables.strip() else None
        except (ValueError, RecursionError):
            return _invalid("variables is not valid JSON.")
    if variables is not None and not isinstance(variables, dict):
        return _invalid("variables must be a JSON object.")
    operation_name = payload.get("operationName")
    if operation_name == "":
        operation_name = None
    if operation_name is not None and not isinstance(operation_name, str):
        return _invalid("operationName must be a string.")
    sha256_hex = _persisted_hash(payload.get("extensions"))
    query = payload.get("query")
    if query is None and sha256_hex is not None:
        query = persisted.lookup(sha256_hex)
        if query is None:
            return _invalid(PERSISTED_QUERY_NOT_FOUND)
    elif isinstance(query, str) and sha256_hex is not None:
        persisted.remember(sha256_hex, query)
    if query is None:
        return _invalid("The request has no query.")
    if not isinstance(query, str):
        return _invalid("query must be a string.")
    # Requests that use the registry must reach it every time (never cached).
    return OperationRequest(query, variables, operation_name), sha256_hex is not None


def _persisted_hash(extensions: object) -> str | None:
    if not isinstance(extensions, dict):
        return None
    persisted = extensions.get("persistedQuery")
    if not isinstance(persisted, dict):
        return None
    sha256_hex = persisted.get("sha256Hash")
    if isinstance(sha256_hex, str) and len(sha256_hex) == 64:
        return sha256_hex
    return None
