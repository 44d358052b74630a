"""The ipReputation step with MaxMind's test databases and a category database we build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.iprep.build import build_mmdb
from sidecar.iprep.mmdb import GeoIpDatabases
from sidecar.model.policy import IpReputationSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.steps.ip_reputation import IpReputationStep, build_ip_reputation_step
from sidecar.stores.base import Operation

RISK = {"tor": 80, "public_proxy": 60, "residential_proxy": 50, "hosting": 40, "vpn": 30}


@pytest.fixture(scope="module")
def geoip(test_databases: list[Path], tmp_path_factory: pytest.TempPathFactory) -> GeoIpDatabases:
    directory = tmp_path_factory.mktemp("custom")
    scanners = directory / "scanners.txt"
    scanners.write_text("# our own list\n198.51.100.0/24\n2001:db8:5ca::/48\n", encoding="utf-8")
    custom = directory / "custom.mmdb"
    build_mmdb(custom, {"scanner": [scanners]})
    return GeoIpDatabases([*test_databases, custom])


def step(geoip: GeoIpDatabases | None, **spec: Any) -> IpReputationStep:
    return build_ip_reputation_step("shop/reviews", IpReputationSpec.model_validate(spec), geoip)


def run(step: IpReputationStep, ip: str) -> tuple[Deny | None, RequestContext]:
    ctx = RequestContext(
        method="GET",
        path="/",
        raw_path="/",
        query="",
        host="api.example.com",
        headers={},
        body=b"",
        source_ip="192.0.2.250",
        client_ip=ip,
        explain=True,
    )
    ops: list[Operation] = []
    deny = step.evaluate(ctx, ops)
    assert ops == []  # a local step
    return deny, ctx


def report(ctx: RequestContext) -> dict[str, Any]:
    (only,) = ctx.reports
    assert only.step == "ip_reputation"
    return only.as_dict()


def test_tor_exit_is_denied_as_anonymous_ip(geoip: GeoIpDatabases) -> None:
    deny, ctx = run(step(geoip, denyCategories=["tor"], risk=RISK), "65.0.0.1")
    assert deny is not None
    assert deny.reason is Reason.ANONYMOUS_IP
    assert deny.status == 403
    assert deny.rule == "ipReputation.denyCategories"
    assert ctx.ip_categories == ("anonymous", "tor")
    assert ctx.risk == 80
    explained = report(ctx)
    assert explained["verdict"] == "deny"
    assert explained["ip"] == "65.0.0.1"
    assert explained["categories"] == ["anonymous", "tor"]
    assert explained["risk"] == 80
    assert explained["country"] is None
    assert explained["rule"] == "ipReputation.denyCategories"


def test_clean_address_is_allowed_with_risk_zero(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, denyCategories=["tor", "vpn"], denyCountries=["KP"], risk=RISK)
    deny, ctx = run(policy, "216.160.83.56")
    assert deny is None
    assert ctx.risk == 0
    assert ctx.ip_categories == ()
    assert ctx.country == "US"
    assert ctx.asn == 209
    assert report(ctx) == {
        "step": "ip_reputation",
        "verdict": "allow",
        "ip": "216.160.83.56",
        "categories": [],
        "country": "US",
        "asn": 209,
        "risk": 0,
        "lookups": {"categories": True, "country": True, "asn": True},
    }


def test_risk_is_the_largest_category_score(geoip: GeoIpDatabases) -> None:
    _, ctx = run(step(geoip, risk={"vpn": 30, "tor": 80}), "1.124.213.1")  # tor + vpn
    assert ctx.risk == 80
    _, ctx = run(step(geoip, risk={"vpn": 30}), "6.1.0.0")
    assert ctx.risk == 30
    _, ctx = run(step(geoip, risk={"tor": 80}), "6.1.0.2")  # hosting: no score given
    assert ctx.risk == 0


def test_every_category_can_be_denied(geoip: GeoIpDatabases) -> None:
    for ip, category in [
        ("6.1.0.0", "vpn"),
        ("6.1.0.2", "hosting"),
        ("6.1.0.3", "public_proxy"),
        ("6.1.0.4", "residential_proxy"),
        ("6.1.0.5", None),
    ]:
        for denied in ["vpn", "hosting", "public_proxy", "residential_proxy"]:
            deny, _ = run(step(geoip, denyCategories=[denied]), ip)
            assert (deny is not None) is (denied == category), (ip, denied)
    deny, _ = run(step(geoip, denyCategories=["anonymous"]), "6.1.0.3")
    assert deny is not None


def test_denied_country(geoip: GeoIpDatabases) -> None:
    deny, ctx = run(step(geoip, denyCountries=["CN", "KP"]), "175.16.199.1")
    assert deny is not None
    assert deny.reason is Reason.COUNTRY_DENIED
    assert deny.rule == "ipReputation.denyCountries"
    assert ctx.country == "CN"
    deny, _ = run(step(geoip, denyCountries=["CN", "KP"]), "89.160.20.112")
    assert deny is None


def test_allow_countries_denies_every_other_country(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, allowCountries=["SE", "GB"])
    assert run(policy, "89.160.20.112")[0] is None
    deny, _ = run(policy, "175.16.199.1")
    assert deny is not None
    assert deny.reason is Reason.COUNTRY_DENIED
    assert deny.rule == "ipReputation.allowCountries"


def test_allow_countries_denies_an_address_without_country(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, allowCountries=["SE"])
    for ip in ["10.0.0.1", "65.0.0.1"]:  # private; Tor exit MaxMind does not place
        deny, _ = run(policy, ip)
        assert deny is not None
        assert deny.rule == "ipReputation.allowCountries"
    internal = step(geoip, allowCountries=["SE"], allowCIDRs=["10.0.0.0/8"])
    assert run(internal, "10.0.0.1")[0] is None


def test_allow_countries_without_a_country_database_is_not_enforced(
    mmdb: dict[str, Path],
) -> None:
    deny, ctx = run(step(GeoIpDatabases([mmdb["anonymous"]]), allowCountries=["SE"]), "10.0.0.1")
    assert deny is None
    assert report(ctx)["lookups"] == {"categories": True, "country": False, "asn": False}


def test_denied_asn(geoip: GeoIpDatabases) -> None:
    deny, ctx = run(step(geoip, denyASNs=[15169]), "1.0.0.1")
    assert deny is not None
    assert deny.reason is Reason.IP_DENIED
    assert deny.rule == "ipReputation.denyASNs"
    assert ctx.asn == 15169
    assert run(step(geoip, denyASNs=[15169]), "1.128.0.1")[0] is None


def test_denied_cidr_names_the_network(geoip: GeoIpDatabases) -> None:
    deny, ctx = run(step(geoip, denyCIDRs=["203.0.113.0/24", "2001:db8:bad::/48"]), "203.0.113.1")
    assert deny is not None
    assert deny.reason is Reason.IP_DENIED
    assert deny.rule == "ipReputation.denyCIDRs"
    assert report(ctx)["denied_by"] == "203.0.113.0/24"


def test_allow_cidrs_exempt_from_every_deny(geoip: GeoIpDatabases) -> None:
    # 81.2.69.142 carries every anonymity flag, is in GB, and is in the denied range.
    everything = {
        "denyCategories": ["tor", "vpn", "hosting"],
        "denyCountries": ["GB"],
        "denyCIDRs": ["81.0.0.0/8"],
        "risk": RISK,
    }
    deny, _ = run(step(geoip, **everything), "81.2.69.142")
    assert deny is not None
    assert deny.rule == "ipReputation.denyCIDRs"  # CIDR rules come first
    deny, ctx = run(step(geoip, **everything, allowCIDRs=["81.2.69.0/24"]), "81.2.69.142")
    assert deny is None
    assert ctx.risk == 80  # exempt from denial, not from the score
    assert ctx.country == "GB"
    assert report(ctx)["allowed_by"] == "81.2.69.0/24"


def test_ipv6(geoip: GeoIpDatabases) -> None:
    deny, ctx = run(step(geoip, denyCategories=["public_proxy"]), "2001:480:3a::1")
    assert deny is not None
    assert deny.reason is Reason.ANONYMOUS_IP
    deny, ctx = run(step(geoip, denyCountries=["JP"]), "2001:218::1")
    assert deny is not None
    assert ctx.country == "JP"
    deny, _ = run(step(geoip, denyCIDRs=["2001:db8::/32"]), "2001:db8::7")
    assert deny is not None
    assert deny.rule == "ipReputation.denyCIDRs"
    assert run(step(geoip, denyCIDRs=["2001:db8::/32"]), "2001:db9::7")[0] is None


def test_ipv4_mapped_client_address_is_treated_as_ipv4(geoip: GeoIpDatabases) -> None:
    deny, ctx = run(step(geoip, denyCategories=["tor"]), "::ffff:65.0.0.1")
    assert deny is not None
    assert ctx.ip_categories == ("anonymous", "tor")
    assert run(step(geoip, denyCIDRs=["65.0.0.0/8"]), "::ffff:65.0.0.1")[0] is not None


def test_custom_category_from_mmdb_build(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, denyCategories=["scanner"], risk={"scanner": 90})
    for ip in ["198.51.100.77", "2001:db8:5ca::1"]:
        deny, ctx = run(policy, ip)
        assert deny is not None
        assert deny.reason is Reason.ANONYMOUS_IP
        assert ctx.ip_categories == ("scanner",)
        assert ctx.risk == 90
    assert run(policy, "198.51.101.1")[0] is None


def test_without_databases_cidrs_still_apply_and_lookups_are_unavailable() -> None:
    policy = step(None, denyCIDRs=["203.0.113.0/24"], denyCategories=["tor"], allowCountries=["SE"])
    deny, ctx = run(policy, "203.0.113.9")
    assert deny is not None
    assert deny.rule == "ipReputation.denyCIDRs"
    assert report(ctx)["lookups"] == "unavailable"
    deny, ctx = run(policy, "65.0.0.1")
    assert deny is None
    assert ctx.risk == 0
    assert report(ctx)["lookups"] == "unavailable"


def test_no_report_unless_explaining(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, denyCategories=["tor"])
    ctx = RequestContext("GET", "/", "/", "", "h", {}, b"", "65.0.0.1", client_ip="65.0.0.1")
    assert policy.evaluate(ctx, []) is not None
    assert ctx.reports == []


def test_source_address_used_when_client_ip_is_unset(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, denyCategories=["tor"])
    ctx = RequestContext("GET", "/", "/", "", "h", {}, b"", "65.0.0.1")
    assert policy.evaluate(ctx, []) is not None


def test_step_settles_nothing(geoip: GeoIpDatabases) -> None:
    policy = step(geoip, denyCategories=["tor"])
    _, ctx = run(policy, "65.0.0.1")
    assert policy.settle(ctx, []) is None
    assert policy.name == "ip_reputation"
