"""Envoy CheckRequest → RequestContext. Never raises: bad input still gets a decision."""

from __future__ import annotations

from typing import Any

from sidecar.compiled.hosts import normalize_host
from sidecar.compiled.paths import normalize_path, split_path
from sidecar.pipeline.context import RequestContext

# Header values beyond this are cut: nothing in a policy needs more, and it bounds
# what one request can make us copy and hash.
MAX_HEADER_VALUE = 16 * 1024 + 64


def _headers(http: Any) -> dict[str, str]:
    headers: dict[str, str] = dict(http.headers)
    if not headers and len(http.header_map.headers):
        # encode_raw_headers: values arrive as bytes, possibly not UTF-8.
        for entry in http.header_map.headers:
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            key = entry.key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    for key, value in headers.items():
        if len(value) > MAX_HEADER_VALUE:
            headers[key] = value[:MAX_HEADER_VALUE]
    return headers


def context_from_check(request: Any, *, explain: bool = False) -> RequestContext:
    attributes = request.attributes
    http = attributes.request.http
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
        host=normalize_host(http.host or headers.get(":authority", "")),
        headers=headers,
        body=body,
        source_ip=attributes.source.address.socket_address.address,
        source_principal=attributes.source.principal,
        context_extensions=dict(attributes.context_extensions),
        explain=explain,
    )
