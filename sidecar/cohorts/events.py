"""What a notification says: one key entering one cohort.

The event is built once, when the store reports ``became_member``, and every
channel renders it from here, so the webhook JSON and the email agree. It never
carries credentials or bodies: the sample request is method, path (no query:
API keys travel there), host, client IP, subject, user agent and status.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.model.policy import NotificationSpec

EVENT_TYPE = "cohort.joined"
_MAX_TEXT = 256

# Header dimensions whose values are credentials: a cohort keyed by one of these
# is reported by a digest of the value, never the value.
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def display_key(key: str, sensitive_dimensions: frozenset[str]) -> str:
    """``header:authorization=Bearer abc`` → ``header:authorization=sha256:1f2e...``."""
    if not sensitive_dimensions:
        return key
    parts: list[str] = []
    for part in key.split("|"):
        dimension, _, value = part.partition("=")
        if dimension in sensitive_dimensions:
            value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]
        parts.append(f"{dimension}={value}")
    return "|".join(parts)


def sensitive_dimensions(dimensions: tuple[str, ...]) -> frozenset[str]:
    return frozenset(
        d
        for d in dimensions
        if d.startswith("header:") and d[len("header:") :].lower() in SENSITIVE_HEADERS
    )


def clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class SampleRequest:
    """The request that made the key a member."""

    method: str
    path: str  # normalised, without query
    host: str
    client_ip: str
    subject: str | None
    user_agent: str | None
    status: int | None  # the response status that counted (response cohorts)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "path": clip(self.path),
            "host": clip(self.host),
            "clientIp": self.client_ip,
        }
        if self.subject is not None:
            out["subject"] = clip(self.subject)
        if self.user_agent is not None:
            out["userAgent"] = clip(self.user_agent)
        if self.status is not None:
            out["status"] = self.status
        return out


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    policy: str
    cohort: str
    key: str  # already passed through ``display_key``
    action: str  # flag | throttle | block
    source: str  # requests | responses
    count: int
    threshold: int
    window: str  # the cohort's period as written, e.g. "24h"
    window_seconds: int
    membership: str  # the cohort's ``for`` as written
    membership_seconds: int
    first_seen: float  # epoch seconds
    last_seen: float
    sample: SampleRequest
    id: str = ""  # one id per membership; every retry of every channel repeats it

    @classmethod
    def new(cls, **fields: Any) -> MembershipEvent:
        return cls(id=uuid.uuid4().hex, **fields)

    @property
    def expires_at(self) -> float:
        return self.last_seen + self.membership_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "event": EVENT_TYPE,
            "id": self.id,
            "policy": self.policy,
            "cohort": self.cohort,
            "key": clip(self.key),
            "action": self.action,
            "source": self.source,
            "count": self.count,
            "threshold": self.threshold,
            "window": self.window,
            "windowSeconds": self.window_seconds,
            "for": self.membership,
            "forSeconds": self.membership_seconds,
            "firstSeen": iso(self.first_seen),
            "lastSeen": iso(self.last_seen),
            "expiresAt": iso(self.expires_at),
            "sample": self.sample.as_json(),
        }


class FirstSeen:
    """When this process first counted a key in the current window (bounded).

    The store keeps only counts, so ``firstSeen`` is what this replica saw: the
    first counted event of the window, else (evicted, counted by another replica)
    the start of the window."""

    __slots__ = ("_capacity", "_seen")

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._seen: dict[tuple[str, str], float] = {}

    def note(self, cohort: str, key: str, now: float, window_seconds: int) -> None:
        slot = (cohort, key)
        seen = self._seen.get(slot)
        if seen is not None and now - seen <= window_seconds:
            return
        if seen is None and len(self._seen) >= self._capacity:
            del self._seen[next(iter(self._seen))]  # oldest insertion first
        self._seen[slot] = now

    def pop(self, cohort: str, key: str, now: float, window_seconds: int) -> float:
        seen = self._seen.pop((cohort, key), None)
        if seen is None or now - seen > window_seconds:
            return now - window_seconds
        return seen


@dataclass(frozen=True, slots=True)
class NotificationTarget:
    """One ``spec.notifications`` entry, compiled with the policy."""

    name: str
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    email_to: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: NotificationSpec) -> NotificationTarget:
        return cls(
            name=spec.name,
            webhook_url=spec.webhook.url if spec.webhook else None,
            webhook_secret=spec.webhook.secret if spec.webhook else None,
            email_to=tuple(spec.email.to) if spec.email else (),
        )


class NotificationSink(Protocol):
    """Where steps hand membership events; must return at once (it is on the Check path)."""

    def submit(self, event: MembershipEvent, targets: Sequence[NotificationTarget]) -> None: ...
