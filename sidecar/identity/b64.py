"""Strict, canonical base64url (RFC 7515 §2: no padding, URL-safe alphabet).

The standard library silently skips characters outside the alphabet and ignores
non-zero trailing bits, so two different strings can decode to the same bytes.
Here exactly one spelling is accepted for each byte string: a token that differs
by one character is a different token, never a second spelling of a valid one.
"""

from __future__ import annotations

import base64
import re

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# The last character of a segment of length 4n+2 carries 2 data bits (4 unused),
# of length 4n+3 carries 4 data bits (2 unused); unused bits must be zero.
_LAST_OF_2 = frozenset(c for i, c in enumerate(ALPHABET) if i % 16 == 0)
_LAST_OF_3 = frozenset(c for i, c in enumerate(ALPHABET) if i % 4 == 0)


def decode_segment(text: str) -> bytes:
    """Decode a segment whose characters are already known to be in the alphabet."""
    remainder = len(text) % 4
    if remainder == 1:
        raise ValueError("base64url length is impossible")
    if remainder == 2:
        if text[-1] not in _LAST_OF_2:
            raise ValueError("base64url is not canonical")
        return base64.urlsafe_b64decode(text + "==")
    if remainder == 3:
        if text[-1] not in _LAST_OF_3:
            raise ValueError("base64url is not canonical")
        return base64.urlsafe_b64decode(text + "=")
    return base64.urlsafe_b64decode(text)


def b64url_decode(text: str) -> bytes:
    """Decode untrusted base64url text; raise ValueError for anything non-canonical."""
    if not _SEGMENT.fullmatch(text):
        raise ValueError("not base64url (allowed: A-Z a-z 0-9 - _, no padding)")
    return decode_segment(text)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
