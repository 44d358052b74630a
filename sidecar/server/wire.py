"""Protocol Buffers wire encoding for the few messages the Check path answers with.

Building a CheckResponse with protobuf objects costs about ten microseconds per
Check, as much as the whole policy evaluation; writing the same bytes directly
costs a fraction of that, and the parts that only depend on the policy are
encoded once and cached. ``tests/unit/server/test_wire.py`` decodes everything
written here with the real generated classes, so the two cannot drift apart.

Field numbers (envoy.service.auth.v3, envoy.config.core.v3, google.protobuf,
google.rpc) are stable parts of published APIs.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.protowire import (
    WIRE_LEN,
    double_field,
    int_field,
    length_delimited,
    prefixed,
    string,
    varint,
)

OVERWRITE_IF_EXISTS_OR_ADD = 2  # HeaderValueOption.HeaderAppendAction


# -- messages ------------------------------------------------------------------------


# The fixed bytes of a HeaderValueOption: HeaderValueOption.header's tag, the
# HeaderValue key/value tags and the append action. Precomputed because RateLimit
# values change on every request, so every rate-limited allow encodes its headers.
_OPTION_HEADER_TAG = varint(1 << 3 | WIRE_LEN)
_KEY_TAG = varint(1 << 3 | WIRE_LEN)
_VALUE_TAG = varint(2 << 3 | WIRE_LEN)
_OVERWRITE = int_field(3, OVERWRITE_IF_EXISTS_OR_ADD)


def header_option(key: str, value: str) -> bytes:
    """HeaderValueOption{header: HeaderValue{key, value}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}."""
    header = (
        _KEY_TAG
        + prefixed(key.encode("utf-8", "replace"))
        + _VALUE_TAG
        + prefixed(value.encode("utf-8", "replace"))
    )
    return _OPTION_HEADER_TAG + prefixed(header) + _OVERWRITE


def rpc_status(code: int) -> bytes:
    """google.rpc.Status{code}."""
    return int_field(1, code) if code else b""


def metadata_entry(key: str, value: str | int | float) -> bytes:
    """One ``fields`` map entry of a Struct; entries concatenate into a Struct body."""
    encoded_value = string(3, value) if isinstance(value, str) else double_field(2, float(value))
    return length_delimited(1, string(1, key) + length_delimited(2, encoded_value))


# CheckResponse fields
CHECK_STATUS = 1
CHECK_DENIED = 2
CHECK_OK = 3
CHECK_METADATA = 4
# OkHttpResponse fields
OK_HEADERS = 2
OK_HEADERS_TO_REMOVE = 5
OK_RESPONSE_HEADERS_TO_ADD = 6
# DeniedHttpResponse fields
DENIED_STATUS = 1
DENIED_HEADERS = 2
DENIED_BODY = 3


def ok_header(key: str, value: str) -> bytes:
    """One OkHttpResponse.headers entry: set ``key`` on the upstream request."""
    return length_delimited(OK_HEADERS, header_option(key, value))


def headers_to_remove(names: Iterable[str]) -> bytes:
    return b"".join(string(OK_HEADERS_TO_REMOVE, name) for name in names)


_RESPONSE_HEADER_TAG = varint(OK_RESPONSE_HEADERS_TO_ADD << 3 | WIRE_LEN)


def response_headers_to_add(headers: Iterable[tuple[str, str]]) -> bytes:
    """OkHttpResponse.response_headers_to_add: set each header on the client's response."""
    return b"".join(_RESPONSE_HEADER_TAG + prefixed(header_option(k, v)) for k, v in headers)


def check_response(status_code: int, body_field: int, body: bytes, metadata: bytes) -> bytes:
    """CheckResponse{status, ok_response|denied_response, dynamic_metadata}."""
    out = length_delimited(CHECK_STATUS, rpc_status(status_code)) + length_delimited(
        body_field, body
    )
    if metadata:
        out += length_delimited(CHECK_METADATA, metadata)
    return out


def denied_response(http_status: int, header_options: Iterable[bytes], body: bytes) -> bytes:
    out = length_delimited(DENIED_STATUS, int_field(1, http_status))
    out += b"".join(length_delimited(DENIED_HEADERS, option) for option in header_options)
    if body:
        out += length_delimited(DENIED_BODY, body)
    return out
