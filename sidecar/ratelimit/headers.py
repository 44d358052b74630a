"""``RateLimit-Policy``, ``RateLimit`` and ``Retry-After`` header values.

Syntax of draft-ietf-httpapi-ratelimit-headers-11 (the latest draft): both
fields are Structured Field Lists (RFC 9651) of Items whose value is a String
naming the quota policy:

    RateLimit-Policy: "login-per-ip";q=10;w=60, "graphql.costBudget";q=5000;w=3600
    RateLimit: "login-per-ip";r=3;t=42, "graphql.costBudget";r=4100;t=1800

``q`` is the quota, ``w`` the window in seconds, ``r`` what remains and ``t``
the effective window in seconds. The partition key (``pk``) is left out: it
would echo the client's address, subject or API-key id back in every response.
When a response carries ``Retry-After`` as well, the denying limits' ``t`` is
the same number of seconds, so ``Retry-After`` never points before the end of
the effective window (draft section 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

POLICY_HEADER = "RateLimit-Policy"
LIMIT_HEADER = "RateLimit"
RETRY_AFTER = "Retry-After"


def seconds(ms: int) -> int:
    """Milliseconds as whole seconds, rounded up (never tell a client to come back early)."""
    return max(0, -(-ms // 1000))


@lru_cache(maxsize=1024)  # rule names: a small, fixed set per policy
def sf_string(value: str) -> str:
    """An RFC 9651 String: quoted, with ``\\`` and ``"`` escaped (printable ASCII only)."""
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"{value!r} cannot be a structured-field string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)  # the same few (rule, effective limit, window) on every response
def policy_item(name: str, quota: int, window_s: int) -> str:
    return f"{sf_string(name)};q={max(0, quota)};w={max(1, window_s)}"


def limit_item(name: str, remaining: int, reset_s: int) -> str:
    return f"{sf_string(name)};r={max(0, remaining)};t={max(0, reset_s)}"


def rate_limit_headers(
    policies: Sequence[str], limits: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """The two fields for already-rendered items (either list may be empty)."""
    headers: list[tuple[str, str]] = []
    if policies:
        headers.append((POLICY_HEADER, ", ".join(policies)))
    if limits:
        headers.append((LIMIT_HEADER, ", ".join(limits)))
    return tuple(headers)


def retry_after(ms: int) -> tuple[str, str]:
    """``Retry-After`` in delay-seconds; at least 1, since 0 invites an immediate retry."""
    return (RETRY_AFTER, str(max(1, seconds(ms))))
