"""Reasons, verdicts and the single reason → status/body/headers table.

This table is copied from the contract (section 4). ``server/responses.py`` is
the only code that turns a Decision into an Envoy CheckResponse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class Reason(StrEnum):
    MISSING_CREDENTIALS = "missing_credentials"
    INVALID_CREDENTIALS = "invalid_credentials"
    REVOKED_CREDENTIALS = "revoked_credentials"
    IP_DENIED = "ip_denied"
    COUNTRY_DENIED = "country_denied"
    ANONYMOUS_IP = "anonymous_ip"
    HONEYPOT = "honeypot"
    COHORT_BLOCKED = "cohort_blocked"
    GRAPHQL_INVALID = "graphql_invalid"
    GRAPHQL_TOO_COMPLEX = "graphql_too_complex"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXHAUSTED = "budget_exhausted"
    COHORT_THROTTLED = "cohort_throttled"
    STORE_UNAVAILABLE = "store_unavailable"


BodyKind = Literal["problem", "graphql"]


@dataclass(frozen=True, slots=True)
class ReasonSpec:
    status: int
    title: str
    body: BodyKind = "problem"


TYPE_BASE = "https://abuse.sidecar.dev/problems/"

REASONS: Mapping[Reason, ReasonSpec] = {
    Reason.MISSING_CREDENTIALS: ReasonSpec(401, "Credentials required"),
    Reason.INVALID_CREDENTIALS: ReasonSpec(401, "Invalid credentials"),
    Reason.REVOKED_CREDENTIALS: ReasonSpec(401, "Credentials revoked"),
    Reason.IP_DENIED: ReasonSpec(403, "Client address denied"),
    Reason.COUNTRY_DENIED: ReasonSpec(403, "Country denied"),
    Reason.ANONYMOUS_IP: ReasonSpec(403, "Anonymising network denied"),
    Reason.HONEYPOT: ReasonSpec(403, "Forbidden"),
    Reason.COHORT_BLOCKED: ReasonSpec(403, "Blocked for abusive behaviour"),
    Reason.GRAPHQL_INVALID: ReasonSpec(400, "Invalid GraphQL request", "graphql"),
    Reason.GRAPHQL_TOO_COMPLEX: ReasonSpec(400, "GraphQL query too complex", "graphql"),
    Reason.RATE_LIMITED: ReasonSpec(429, "Too many requests"),
    Reason.BUDGET_EXHAUSTED: ReasonSpec(429, "Query cost budget exhausted"),
    Reason.COHORT_THROTTLED: ReasonSpec(429, "Throttled for abusive behaviour"),
    Reason.STORE_UNAVAILABLE: ReasonSpec(503, "Abuse protection unavailable"),
}


@dataclass(frozen=True, slots=True)
class Deny:
    """A step's refusal. ``rule`` names what in the policy refused (rate limit name,
    ``honeypots``, ``ipReputation.denyCountries``, ...); ``detail`` is safe to show the
    client (never why a signature failed, never a credential)."""

    reason: Reason
    rule: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()
    extensions: Mapping[str, object] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return REASONS[self.reason].status


Verdict = Literal["allow", "deny", "skip", "shadow", "error"]


@dataclass(slots=True)
class Decision:
    """What the engine answers for one Check, before it becomes an Envoy response."""

    allowed: bool
    policy: str  # "ns/name" or "none"
    deny: Deny | None = None
    shadow: Deny | None = None  # first would-be deny in shadow mode
    subject: str | None = None
    plan: str | None = None
    api_key_id: str | None = None  # the key's id, never the key
    risk: int = 0
    flags: tuple[str, ...] = ()
    # Headers for the client on allowed responses too (RateLimit, RateLimit-Policy).
    response_headers: tuple[tuple[str, str], ...] = ()
    # Metadata Envoy puts into the access-log entry (cohorts on response codes).
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        if self.deny is not None:
            return self.deny.reason.value
        return ""

    @property
    def rule(self) -> str:
        if self.deny is not None:
            return self.deny.rule
        return ""
