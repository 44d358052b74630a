"""AbusePolicy v1alpha1 as typed, validated models (CONTRACT.md section 3).

This module is the single source of the schema: ``loader.py`` validates documents
with it (errors carry the field path as the user wrote it, in camelCase) and
``crd.py`` generates the CustomResourceDefinition from it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from sidecar.model.durations import DURATION_PATTERN

API_VERSION = "abuse.sidecar.dev/v1alpha1"
KIND = "AbusePolicy"
GROUP = "abuse.sidecar.dev"
VERSION = "v1alpha1"
PLURAL = "abusepolicies"

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, examples=["90s", "10m", "24h", "7d"])]
PathPattern = Annotated[
    str,
    Field(
        pattern=r"^/[^\s?#]*$",
        description="Exact path (/login), * for one segment (/users/*/orders), ** for any rest (/admin/**).",
    ),
]
HttpMethod = Annotated[str, Field(pattern=r"^[A-Z]+$", max_length=20)]
KEY_PATTERN = r"^(ip|ip_prefix:([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])|subject|api_key|plan|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|method|path)$"
KeyDimension = Annotated[
    str,
    Field(
        pattern=KEY_PATTERN,
        description="ip | ip_prefix:<bits> | subject | api_key | plan | header:<name> | method | path",
    ),
]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
CategoryName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
RuleName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$", max_length=63)]
HostPattern = Annotated[
    str, Field(pattern=r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\.?(:[0-9]{1,5})?$")
]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class _Model(BaseModel):
    """Common settings: camelCase on the wire, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )


class ClientIPSpec(_Model):
    xff_trusted_hops: int = Field(
        0,
        ge=0,
        le=16,
        description="Right-most X-Forwarded-For entries appended by trusted proxies; 0 uses the connection's source address.",
    )


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict)


# Subjects and plans travel upstream in x-abuse-subject / x-abuse-plan headers.
HeaderSafe = Annotated[
    str, Field(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")
]


class InlineApiKey(_Model):
    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    sha256: Sha256Hex = Field(description="SHA-256 hex digest of the key; never the key itself.")
    subject: HeaderSafe
    plan: HeaderSafe | None = None


class ApiKeySpec(_Model):
    in_: Literal["header", "query"] = Field("header", alias="in")
    name: Annotated[str, Field(min_length=1, max_length=128)] = "x-api-key"
    secret_selector: LabelSelector | None = None
    keys: list[InlineApiKey] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _unique_ids(cls, keys: list[InlineApiKey]) -> list[InlineApiKey]:
        seen: set[str] = set()
        for key in keys:
            if key.id in seen:
                raise ValueError(f"duplicate key id {key.id!r}")
            seen.add(key.id)
        return keys


JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


_DEFAULT_ALGORITHMS: list[JwtAlgorithm] = ["RS256", "ES256"]


class InlineJwks(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    keys: list[dict[str, Any]] = Field(min_length=1)


class JwtSpec(_Model):
    issuer: Annotated[str, Field(min_length=1)]
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: Annotated[str, Field(pattern=r"^https?://")] | None = None
    jwks: InlineJwks | None = None
    algorithms: list[JwtAlgorithm] = Field(default_factory=_DEFAULT_ALGORITHMS.copy, min_length=1)
    leeway: Duration = "30s"
    subject_claim: str = "sub"
    plan_claim: str = "plan"
    revocation: bool = False

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSpec:
        if (self.jwks_uri is None) == (self.jwks is None):
            raise ValueError("set exactly one of jwksUri or jwks")
        return self


class IdentitySpec(_Model):
    required: bool = False
    api_key: ApiKeySpec | None = None
    jwt: JwtSpec | None = None
    mtls: bool = False


class IpReputationSpec(_Model):
    deny_categories: list[CategoryName] = Field(default_factory=list)
    deny_countries: list[CountryCode] = Field(default_factory=list)
    allow_countries: list[CountryCode] = Field(default_factory=list)
    deny_as_ns: list[Annotated[int, Field(ge=0, le=4294967295)]] = Field(
        default_factory=list, alias="denyASNs"
    )
    deny_cid_rs: list[str] = Field(default_factory=list, alias="denyCIDRs")
    allow_cid_rs: list[str] = Field(default_factory=list, alias="allowCIDRs")
    risk: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(default_factory=dict)

    @field_validator("deny_cid_rs", "allow_cid_rs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for index, value in enumerate(values):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"[{index}] {value!r} is not an IP address or CIDR") from None
        return values


class RequestMatch(_Model):
    methods: list[HttpMethod] = Field(default_factory=list)
    paths: list[PathPattern] = Field(default_factory=list)


class RateLimitSpec(_Model):
    name: RuleName
    match: RequestMatch = Field(default_factory=RequestMatch)
    by: list[KeyDimension] = Field(default_factory=lambda: ["ip"])
    limit: Annotated[int, Field(ge=1)]
    period: Duration
    algorithm: Literal["sliding_window", "token_bucket", "fixed_window"] = "sliding_window"
    burst: Annotated[int, Field(ge=1)] | None = None
    plans: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    risk_scaling: bool = False

    @model_validator(mode="after")
    def _burst_only_for_bucket(self) -> RateLimitSpec:
        if self.burst is not None and self.algorithm != "token_bucket":
            raise ValueError("burst is only valid with algorithm: token_bucket")
        return self


class CostBudgetSpec(_Model):
    limit: Annotated[int, Field(ge=1)]
    period: Duration
    by: list[KeyDimension] = Field(default_factory=lambda: ["subject"])


class GraphQLSpec(_Model):
    paths: list[PathPattern] = Field(default_factory=lambda: ["/graphql"])
    max_body_bytes: Annotated[int, Field(ge=1)] = 65536
    max_depth: Annotated[int, Field(ge=1)] = 12
    max_aliases: Annotated[int, Field(ge=0)] = 15
    max_root_fields: Annotated[int, Field(ge=1)] = 20
    max_directives: Annotated[int, Field(ge=0)] = 50
    max_tokens: Annotated[int, Field(ge=1)] = 5000
    max_cost: Annotated[int, Field(ge=1)] = 1000
    default_list_size: Annotated[int, Field(ge=0)] = 10
    max_list_size: Annotated[int, Field(ge=1)] = 100
    introspection: Literal["allow", "deny"] = "allow"
    schema_: str | None = Field(None, alias="schema")
    cost_budget: CostBudgetSpec | None = None


class CohortSpec(_Model):
    name: RuleName
    match: RequestMatch = Field(default_factory=RequestMatch)
    response_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=list)
    by: KeyDimension = "subject"
    threshold: Annotated[int, Field(ge=1)]
    period: Duration
    action: Literal["flag", "throttle", "block"] = "flag"
    for_: Duration = Field("24h", alias="for")
    notify: list[str] = Field(default_factory=list)


class HoneypotSpec(_Model):
    paths: list[PathPattern] = Field(default_factory=list)
    block_for: Duration = "24h"


class WebhookSpec(_Model):
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: str | None = Field(
        None, description="Signs each body with HMAC-SHA256 (X-Abuse-Signature: sha256=<hex>)."
    )


_EMAIL = r"^[^@\s]+@[^@\s]+$"


class EmailSpec(_Model):
    to: list[Annotated[str, Field(pattern=_EMAIL)]] = Field(min_length=1)


class NotificationSpec(_Model):
    name: RuleName
    webhook: WebhookSpec | None = None
    email: EmailSpec | None = None

    @model_validator(mode="after")
    def _has_channel(self) -> NotificationSpec:
        if self.webhook is None and self.email is None:
            raise ValueError("set webhook, email or both")
        return self


class AbusePolicySpec(_Model):
    hosts: list[HostPattern] = Field(default_factory=list)
    mode: Literal["enforce", "shadow"] = "enforce"
    failure_mode: Literal["open", "closed"] = "open"
    client_ip: ClientIPSpec = Field(default_factory=ClientIPSpec, alias="clientIP")
    identity: IdentitySpec | None = None
    ip_reputation: IpReputationSpec | None = None
    rate_limits: list[RateLimitSpec] = Field(default_factory=list)
    graphql: GraphQLSpec | None = None
    cohorts: list[CohortSpec] = Field(default_factory=list)
    honeypots: HoneypotSpec | None = None
    notifications: list[NotificationSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_references(self) -> AbusePolicySpec:
        _unique("rateLimits", [r.name for r in self.rate_limits])
        _unique("cohorts", [c.name for c in self.cohorts])
        _unique("notifications", [n.name for n in self.notifications])
        known = {n.name for n in self.notifications}
        for index, cohort in enumerate(self.cohorts):
            for target in cohort.notify:
                if target not in known:
                    raise _FieldError(
                        f"cohorts[{index}].notify",
                        f"{target!r} is not a notification defined in spec.notifications",
                    )
        return self


class _FieldError(ValueError):
    """A cross-field error that knows the path of the field inside spec."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise _FieldError(f"{section}[{index}].name", f"duplicate name {name!r}")
        seen.add(name)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ]
    namespace: Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = (
        "default"
    )
    generation: int = Field(0)
    resource_version: str | None = Field(None, alias="resourceVersion")
    uid: str | None = None


class AbusePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Literal["abuse.sidecar.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["AbusePolicy"]
    metadata: ObjectMeta
    spec: AbusePolicySpec
    status: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"
