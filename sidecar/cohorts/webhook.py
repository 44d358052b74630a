"""Webhook delivery: one signed JSON POST per membership, retried with backoff.

The receiver can trust and de-duplicate what arrives:

- ``X-Abuse-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes with
  the notification's ``secret`` (only when a secret is configured);
- ``X-Abuse-Delivery``: the event id, identical on every retry, so a receiver that
  answered 200 too late for us to see can drop the duplicate.

Retried: connection errors, timeouts, 408, 425, 429 and 5xx. Any other status is
final: the receiver refused the notification and sending it again will not help.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

import httpx

from sidecar.cohorts.events import EVENT_TYPE, MembershipEvent

SIGNATURE_HEADER = "X-Abuse-Signature"
DELIVERY_HEADER = "X-Abuse-Delivery"
EVENT_HEADER = "X-Abuse-Event"
USER_AGENT = "abuse-sidecar-webhook/1"
_RETRYABLE_STATUS = frozenset({408, 425, 429})


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def render_body(event: MembershipEvent) -> bytes:
    return json.dumps(event.as_json(), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST: delivered, or why not and whether to try again."""

    delivered: bool
    retry: bool
    detail: str
    retry_after: float | None = None  # seconds the receiver asked us to wait


async def post(
    client: httpx.AsyncClient, url: str, secret: str | None, event: MembershipEvent, body: bytes
) -> Attempt:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: EVENT_TYPE,
        DELIVERY_HEADER: event.id,
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return Attempt(False, True, "timed out")
    except httpx.TransportError as exc:
        return Attempt(False, True, f"connection failed: {exc.__class__.__name__}: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True, False, f"HTTP {status}")
    retry = status >= 500 or status in _RETRYABLE_STATUS
    return Attempt(
        False, retry, f"HTTP {status}", _retry_after(response.headers.get("retry-after"))
    )


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
