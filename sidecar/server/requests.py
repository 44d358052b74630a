"""Envoy CheckRequest → RequestContext. Never raises: bad input still gets a decision."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from sidecar.compiled.hosts import normalize_host
from sidecar.compiled.paths import normalize_path, split_path
from sidecar.pipeline.context import RequestContext


def _headers(http: Any) -> Mapping[str, str]:
    headers: Mapping[str, str] = http.headers
    if len(headers):
        # Envoy's header map as it arrived (names already lower-case): a read-only
        # mapping in C, cheaper to consult than to copy on every Check.
        return headers
    raw = http.header_map.headers
    if not len(raw):
        return {}
    # encode_raw_headers: values arrive as bytes, possibly not UTF-8.
    joined: dict[str, str] = {}
    for entry in raw:
        value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
        key = entry.key.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


_NO_EXTENSIONS: Mapping[str, str] = MappingProxyType({})
# A deployment serves a handful of authorities: normalise each once.
_host = lru_cache(maxsize=4096)(normalize_host)


def context_from_check(request: Any, *, explain: bool = False) -> RequestContext:
    attributes = request.attributes
    http = attributes.request.http
    extensions = attributes.context_extensions
    headers = _headers(http)
    raw_path = http.path or headers.get(":path", "/")
    path, query = split_path(raw_path)
    if not query and http.query:
        query = http.query
    body: bytes = http.raw_body or (http.body.encode("utf-8", "replace") if http.body else b"")
    return RequestContext(
        method=(http.method or headers.get(":method", "GET")).upper(),
        path=normalize_path(path or "/"),
        raw_path=raw_path,
        query=query,
        host=_host(http.host or headers.get(":authority", "")),
        headers=headers,
        body=body,
        source_ip=attributes.source.address.socket_address.address,
        source_principal=attributes.source.principal,
        context_extensions=dict(extensions) if len(extensions) else _NO_EXTENSIONS,
        explain=explain,
    )
