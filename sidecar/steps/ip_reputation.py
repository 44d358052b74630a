"""``spec.ipReputation``: CIDR, ASN, country and category rules, and the risk score.

Rules, checked in this order, the first match denying (403):

1. ``allowCIDRs``: an address inside is exempt from every rule below (its facts
   and risk are still recorded).
2. ``denyCIDRs`` → ``ip_denied``; 3. ``denyASNs`` → ``ip_denied``;
4. ``denyCategories`` → ``anonymous_ip`` (MaxMind Anonymous IP categories and the
   categories of ``mmdb build`` databases alike);
5. ``denyCountries`` → ``country_denied`` (a country in both lists is denied);
6. ``allowCountries`` (non-empty) → ``country_denied`` for every other country,
   **including an address with no known country** (private ranges, Tor exits that
   MaxMind does not place, anycast): an allow list admits only what it names. Put
   internal ranges in ``allowCIDRs``. When no Country/City database is loaded at all
   the rule cannot be evaluated and is skipped (``lookups`` in the explanation says
   which data were missing), rather than denying every request.

Risk (0-100, ``x-abuse-risk`` upstream, ``riskScaling`` in rate limits) is the
largest ``risk`` score among the address's categories; categories without a score
count 0, so an address with no category has risk 0.

Without any ``--geoip`` database the CIDR rules are still enforced; the explanation
reports ``lookups: unavailable``.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.iprep.cidrs import CidrSet, address_to_int
from sidecar.iprep.mmdb import NO_FACTS, GeoIpDatabases, IpFacts
from sidecar.model.policy import IpReputationSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.step import LocalStep
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.stores.base import Operation

__all__ = ["IpReputationStep", "build_ip_reputation_step"]

STEP = "ip_reputation"

_DENY_CIDR = Deny(
    Reason.IP_DENIED, "ipReputation.denyCIDRs", "Requests from this address are not accepted."
)
_DENY_ASN = Deny(
    Reason.IP_DENIED, "ipReputation.denyASNs", "Requests from this network are not accepted."
)
_DENY_CATEGORY = Deny(
    Reason.ANONYMOUS_IP,
    "ipReputation.denyCategories",
    "Requests through anonymising networks or proxies are not accepted.",
)
_DENY_COUNTRY = Deny(
    Reason.COUNTRY_DENIED,
    "ipReputation.denyCountries",
    "Requests from this country are not accepted.",
)
_NOT_ALLOWED_COUNTRY = Deny(
    Reason.COUNTRY_DENIED,
    "ipReputation.allowCountries",
    "Requests from this country are not accepted.",
)


class IpReputationStep(LocalStep):
    """Compiled ``spec.ipReputation``; every table is built once by the builder."""

    __slots__ = (
        "allow_cidrs",
        "allow_countries",
        "any_cidrs",
        "deny_asns",
        "deny_categories",
        "deny_cidrs",
        "deny_countries",
        "geoip",
        "name",
        "policy_id",
        "risk_scores",
    )

    def __init__(
        self,
        policy_id: str,
        *,
        allow_cidrs: CidrSet,
        deny_cidrs: CidrSet,
        deny_asns: frozenset[int],
        deny_categories: frozenset[str],
        deny_countries: frozenset[str],
        allow_countries: frozenset[str],
        risk_scores: Mapping[str, int],
        geoip: GeoIpDatabases | None,
    ) -> None:
        self.name = STEP
        self.policy_id = policy_id
        self.allow_cidrs = allow_cidrs
        self.deny_cidrs = deny_cidrs
        self.any_cidrs = bool(allow_cidrs) or bool(deny_cidrs)
        self.deny_asns = deny_asns
        self.deny_categories = deny_categories
        self.deny_countries = deny_countries
        self.allow_countries = allow_countries
        self.risk_scores = risk_scores
        self.geoip = geoip

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        ip = ctx.client_ip or ctx.source_ip
        geoip = self.geoip
        facts = geoip.lookup(ip) if geoip is not None else NO_FACTS
        risk = 0
        if facts.categories:
            scores = self.risk_scores
            risk = max(scores.get(category, 0) for category in facts.categories)
        ctx.ip_categories = facts.categories
        ctx.risk = risk
        ctx.country = facts.country
        ctx.asn = facts.asn

        address = address_to_int(ip) if self.any_cidrs else None
        if self.allow_cidrs.contains(address):
            if ctx.explain:
                self._report(ctx, "allow", ip, facts, risk, allowed_by=self.allow_cidrs.match(ip))
            return None
        deny = self._first_deny(address, facts)
        if ctx.explain:
            matched = self.deny_cidrs.match(ip) if deny is _DENY_CIDR else None
            self._report(
                ctx,
                "allow" if deny is None else "deny",
                ip,
                facts,
                risk,
                rule=deny.rule if deny else None,
                denied_by=matched,
            )
        return deny

    def _first_deny(self, address: tuple[int, int] | None, facts: IpFacts) -> Deny | None:
        if self.deny_cidrs.contains(address):
            return _DENY_CIDR
        if facts.asn is not None and facts.asn in self.deny_asns:
            return _DENY_ASN
        if self.deny_categories and not self.deny_categories.isdisjoint(facts.categories):
            return _DENY_CATEGORY
        country = facts.country
        if country is not None and country in self.deny_countries:
            return _DENY_COUNTRY
        if (
            self.allow_countries
            and country not in self.allow_countries
            and (country is not None or (self.geoip is not None and self.geoip.knows_country))
        ):
            return _NOT_ALLOWED_COUNTRY
        return None

    def _report(
        self, ctx: RequestContext, verdict: str, ip: str, facts: IpFacts, risk: int, **extra: object
    ) -> None:
        ctx.report(
            STEP,
            verdict,
            ip=ip,
            categories=list(facts.categories),
            country=facts.country,
            asn=facts.asn,
            risk=risk,
            lookups=self._lookups(),
            **{key: value for key, value in extra.items() if value is not None},
        )

    def _lookups(self) -> str | dict[str, bool]:
        geoip = self.geoip
        if geoip is None or not geoip.available:
            return "unavailable"
        return {
            "categories": geoip.knows_categories,
            "country": geoip.knows_country,
            "asn": geoip.knows_asn,
        }


def build_ip_reputation_step(
    policy_id: str, spec: IpReputationSpec, geoip: GeoIpDatabases | None
) -> IpReputationStep:
    """Compile ``spec.ipReputation``. Raises ValueError naming a bad entry."""
    try:
        allow_cidrs = CidrSet.compile(spec.allow_cid_rs)
    except ValueError as exc:
        raise ValueError(f"allowCIDRs{exc}") from None
    try:
        deny_cidrs = CidrSet.compile(spec.deny_cid_rs)
    except ValueError as exc:
        raise ValueError(f"denyCIDRs{exc}") from None
    return IpReputationStep(
        policy_id,
        allow_cidrs=allow_cidrs,
        deny_cidrs=deny_cidrs,
        deny_asns=frozenset(spec.deny_as_ns),
        deny_categories=frozenset(spec.deny_categories),
        deny_countries=frozenset(spec.deny_countries),
        allow_countries=frozenset(spec.allow_countries),
        risk_scores=dict(spec.risk),
        geoip=geoip,
    )
