"""Protocol Buffers wire-format primitives, for the messages we write by hand.

The Check path answers with CheckResponse bytes (``server/wire.py``) and tracing
exports OTLP spans (``observability/otlp.py``) without building protobuf objects:
each costs several microseconds per message, where concatenating a few cached
byte strings costs a fraction of one. Both encode with these functions; the
tests decode what they write with the generated classes.

Reference: https://protobuf.dev/programming-guides/encoding/
"""

from __future__ import annotations

import struct

WIRE_FIXED64 = 1
WIRE_LEN = 2

_UINT64 = 1 << 64


def _varint_slow(value: int) -> bytes:
    if value < 0:
        value += _UINT64  # int32/int64 negatives are ten-byte two's-complement varints
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Tags, lengths and small numbers: one tuple lookup instead of a loop.
_SMALL_VARINTS = tuple(_varint_slow(n) for n in range(1 << 14))


def varint(value: int) -> bytes:
    if 0 <= value < 1 << 14:
        return _SMALL_VARINTS[value]
    return _varint_slow(value)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field: strings, bytes, embedded messages."""
    return varint(number << 3 | WIRE_LEN) + prefixed(payload)


def string(number: int, text: str) -> bytes:
    return length_delimited(number, text.encode("utf-8", "replace"))


def int_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def double_field(number: int, value: float) -> bytes:
    return varint(number << 3 | WIRE_FIXED64) + struct.pack("<d", value)


def prefixed(body: bytes) -> bytes:
    """``body`` preceded by its length: the tail of a length-delimited field whose
    tag the caller wrote itself."""
    size = len(body)
    return (_SMALL_VARINTS[size] if size < 1 << 14 else _varint_slow(size)) + body
