"""Issue 4 through real Envoy: IP reputation rules, risk, X-Forwarded-For, database swaps.

Every request reaches Envoy from 127.0.0.1, so the policies trust one proxy hop
(``clientIP.xffTrustedHops``) and each request names its client in
``X-Forwarded-For``. The addresses are MaxMind's test data; the README beside the
databases says which one is Tor, VPN, hosting, which country and which ASN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.envoy import EnvoyProcess
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess, sidecar_command
from tests.harness.stack import Stack
from tests.harness.upstream import UpstreamServer
from tests.shared_data import mmdb_dir

pytestmark = pytest.mark.e2e

MMDB_DIR = mmdb_dir()

# From the test data README.
IP_TOR = "65.0.0.1"  # anonymous + tor, no country, no ASN
IP_TOR_OUTSIDE_ALLOW = "65.1.0.1"  # same Tor /13, outside the allowCIDRs /24 below
IP_VPN = "6.1.0.0"  # anonymous + vpn
IP_HOSTING = "6.1.0.2"  # anonymous + hosting
IP_RESIDENTIAL = "6.1.0.4"  # anonymous + residential_proxy
IP_CN = "175.16.199.1"
IP_SE = "89.160.20.112"  # AS29518
IP_CLEAN = "216.160.83.56"  # US, AS209
IP_GOOGLE_ASN = "1.0.0.1"  # AS15169, no country
IP_TEST_NET = "203.0.113.1"  # in no database
IP_PRIVATE = "10.0.0.1"  # in no database
IP6_PROXY = "2001:480:3a::1"  # anonymous + public_proxy
IP6_JP = "2001:218::1"

RULES = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: rules, namespace: iprep}
spec:
  hosts: [rules.example.test]
  clientIP: {xffTrustedHops: 1}
  ipReputation:
    denyCategories: [tor, public_proxy]
    denyCountries: [CN, JP]
    denyASNs: [15169]
    denyCIDRs: [203.0.113.0/24, "2001:db8:bad::/48"]
    allowCIDRs: [65.0.0.0/24, 203.0.113.128/25]
    risk: {tor: 80, public_proxy: 60, residential_proxy: 50, hosting: 40, vpn: 30}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: allowlist, namespace: iprep}
spec:
  hosts: [allowlist.example.test]
  clientIP: {xffTrustedHops: 1}
  ipReputation:
    allowCountries: [SE, US]
    allowCIDRs: [10.0.0.0/8]
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: two-hops, namespace: iprep}
spec:
  hosts: [two-hops.example.test]
  clientIP: {xffTrustedHops: 2}
  ipReputation:
    denyCategories: [tor]
"""

CUSTOM = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: custom, namespace: iprep}
spec:
  hosts: [custom.example.test]
  clientIP: {xffTrustedHops: 1}
  ipReputation:
    denyCategories: [scanner]
    risk: {crawler: 25}
"""


@pytest.fixture(scope="module")
def maxmind() -> list[Path]:
    paths = [
        MMDB_DIR / "GeoIP2-Anonymous-IP-Test.mmdb",
        MMDB_DIR / "GeoIP2-Country-Test.mmdb",
        MMDB_DIR / "GeoLite2-ASN-Test.mmdb",
    ]
    missing = [str(path) for path in paths if not path.is_file()]
    assert not missing, f"MaxMind test databases missing (see {MMDB_DIR}/README.md): {missing}"
    return paths


def _eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _get(envoy: EnvoyProcess, host: str, xff: str | None, path: str = "/items") -> httpx.Response:
    headers = {"host": host}
    if xff is not None:
        headers["x-forwarded-for"] = xff
    return httpx.get(envoy.url(path), headers=headers, timeout=10)


def _assert_denied(response: httpx.Response, reason: str, rule: str, policy: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["x-abuse-reason"] == reason
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 403
    assert problem["rule"] == rule
    assert problem["policy"] == policy
    assert problem["type"].endswith(f"/{reason}")


def _risk_upstream(response: httpx.Response) -> str:
    """The ``x-abuse-risk`` the application received for an allowed request."""
    assert response.status_code == 200, response.text
    return str(response.json()["headers"]["x-abuse-risk"])


def _mmdb_build(out: Path, *categories: str) -> None:
    """``abuse-sidecar mmdb build`` as an operator runs it."""
    argv = [*sidecar_command(), "mmdb", "build", "--out", str(out)]
    for category in categories:
        argv += ["--category", category]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def _geoip_state(sidecar: SidecarProcess, endpoint: str) -> dict[str, Any]:
    status, body = sidecar.admin_get(endpoint)
    assert status == 200, body
    (database,) = json.loads(body)["geoip"]
    assert isinstance(database, dict)
    return database


@pytest.fixture
def rules_stack(
    stack: Stack, tmp_path: Path, maxmind: list[Path]
) -> tuple[EnvoyProcess, UpstreamServer]:
    (tmp_path / "policies.yaml").write_text(RULES)
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path / "policies.yaml"], geoip=maxmind)
    return stack.envoy(sidecar, app), app


def test_each_rule_denies_with_its_reason(
    rules_stack: tuple[EnvoyProcess, UpstreamServer],
) -> None:
    envoy, app = rules_stack
    host, policy = "rules.example.test", "iprep/rules"

    categories = "ipReputation.denyCategories"
    _assert_denied(_get(envoy, host, IP_TOR_OUTSIDE_ALLOW), "anonymous_ip", categories, policy)
    # IPv4-mapped IPv6 is the same client as its IPv4 form.
    _assert_denied(
        _get(envoy, host, f"::ffff:{IP_TOR_OUTSIDE_ALLOW}"), "anonymous_ip", categories, policy
    )
    _assert_denied(_get(envoy, host, IP6_PROXY), "anonymous_ip", categories, policy)

    countries = "ipReputation.denyCountries"
    _assert_denied(_get(envoy, host, IP_CN), "country_denied", countries, policy)
    _assert_denied(_get(envoy, host, IP6_JP), "country_denied", countries, policy)

    _assert_denied(_get(envoy, host, IP_GOOGLE_ASN), "ip_denied", "ipReputation.denyASNs", policy)
    _assert_denied(_get(envoy, host, IP_TEST_NET), "ip_denied", "ipReputation.denyCIDRs", policy)
    _assert_denied(
        _get(envoy, host, "2001:db8:bad:1::7"), "ip_denied", "ipReputation.denyCIDRs", policy
    )
    assert app.requests == [], "no denied request reaches the application"


def test_allowed_requests_carry_the_risk_of_their_categories(
    rules_stack: tuple[EnvoyProcess, UpstreamServer],
) -> None:
    envoy, app = rules_stack
    host = "rules.example.test"

    clean = _get(envoy, host, IP_CLEAN)
    assert _risk_upstream(clean) == "0"
    assert clean.json()["headers"]["x-abuse-policy"] == "iprep/rules"
    assert _risk_upstream(_get(envoy, host, IP_SE)) == "0"
    assert _risk_upstream(_get(envoy, host, IP_VPN)) == "30"
    assert _risk_upstream(_get(envoy, host, IP_HOSTING)) == "40"
    assert _risk_upstream(_get(envoy, host, IP_RESIDENTIAL)) == "50"
    assert len(app.requests_to("/items")) == 5


def test_allow_cidrs_exempt_from_every_deny_but_keep_their_risk(
    rules_stack: tuple[EnvoyProcess, UpstreamServer],
) -> None:
    envoy, _app = rules_stack
    host = "rules.example.test"

    # A Tor exit inside allowCIDRs: allowed, still scored as Tor.
    assert _risk_upstream(_get(envoy, host, IP_TOR)) == "80"
    # Inside both denyCIDRs and allowCIDRs: the allow list wins.
    assert _risk_upstream(_get(envoy, host, "203.0.113.200")) == "0"
    assert _get(envoy, host, "203.0.113.100").status_code == 403


def test_allow_countries_admit_only_the_countries_named(
    rules_stack: tuple[EnvoyProcess, UpstreamServer],
) -> None:
    envoy, _app = rules_stack
    host, policy, rule = "allowlist.example.test", "iprep/allowlist", "ipReputation.allowCountries"

    assert _get(envoy, host, IP_SE).status_code == 200
    assert _get(envoy, host, IP_CLEAN).status_code == 200
    _assert_denied(_get(envoy, host, IP_CN), "country_denied", rule, policy)
    _assert_denied(_get(envoy, host, IP6_JP), "country_denied", rule, policy)
    # No known country is not a named country ...
    _assert_denied(_get(envoy, host, IP_TOR), "country_denied", rule, policy)
    # ... and internal ranges go in allowCIDRs.
    assert _get(envoy, host, IP_PRIVATE).status_code == 200


def test_trusted_xff_entry_is_the_client_and_spoofed_entries_are_ignored(
    rules_stack: tuple[EnvoyProcess, UpstreamServer],
) -> None:
    envoy, _app = rules_stack
    host = "rules.example.test"

    # One trusted hop: the right-most entry is the client; a clean address written
    # to its left by the client changes nothing.
    denied = _get(envoy, host, f"{IP_CLEAN}, {IP_TOR_OUTSIDE_ALLOW}")
    assert denied.headers["x-abuse-reason"] == "anonymous_ip"
    # A Tor address spoofed on the left is not the client either.
    assert _risk_upstream(_get(envoy, host, f"{IP_TOR_OUTSIDE_ALLOW}, {IP_CLEAN}")) == "0"
    assert _risk_upstream(_get(envoy, host, f"{IP_HOSTING}, {IP_CLEAN}")) == "0"
    # No header: the connection's address (127.0.0.1), which has no category.
    assert _risk_upstream(_get(envoy, host, None)) == "0"

    two = "two-hops.example.test"
    # Two trusted hops: the second entry from the right; the last is our own proxy.
    tor_behind_proxy = _get(envoy, two, f"{IP_CLEAN}, {IP_TOR_OUTSIDE_ALLOW}, 10.1.2.3")
    assert tor_behind_proxy.headers["x-abuse-reason"] == "anonymous_ip"
    assert _get(envoy, two, f"{IP_TOR_OUTSIDE_ALLOW}, {IP_CLEAN}, 10.1.2.3").status_code == 200
    # Fewer entries than trusted hops: the source address, not the lone entry.
    assert _get(envoy, two, IP_TOR_OUTSIDE_ALLOW).status_code == 200


def test_custom_categories_and_database_replacement(stack: Stack, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "scanners.txt").write_text("# our scanners\n198.51.100.0/24\n2001:db8:5ca::/48\n")
    (lists / "crawlers.txt").write_text("192.0.2.0/24  # a crawler we tolerate\n")
    (lists / "scanners-v2.txt").write_text("192.0.2.0/25\n")
    geoip_dir = tmp_path / "geoip"
    geoip_dir.mkdir()
    custom = geoip_dir / "custom.mmdb"
    _mmdb_build(custom, f"scanner={lists / 'scanners.txt'}", f"crawler={lists / 'crawlers.txt'}")
    (tmp_path / "custom.yaml").write_text(CUSTOM)

    app = stack.upstream()
    sidecar = stack.sidecar(
        policies=[tmp_path / "custom.yaml"],
        geoip=[custom],
        env={"ABUSE_SIDECAR_GEOIP_POLL_SECONDS": "0.2"},
    )
    envoy = stack.envoy(sidecar, app)
    host, policy = "custom.example.test", "iprep/custom"

    def status(ip: str) -> int:
        return _get(envoy, host, ip).status_code

    _assert_denied(
        _get(envoy, host, "198.51.100.7"), "anonymous_ip", "ipReputation.denyCategories", policy
    )
    _assert_denied(
        _get(envoy, host, "2001:db8:5ca::9"), "anonymous_ip", "ipReputation.denyCategories", policy
    )
    assert _risk_upstream(_get(envoy, host, "192.0.2.10")) == "25"
    assert _risk_upstream(_get(envoy, host, "192.0.3.1")) == "0"
    first = _geoip_state(sidecar, "/policies")
    assert first["type"] == "AbuseSidecar-Categories"
    assert first["state"] == "loaded"
    assert first["lastError"] is None

    # A new list, written next to the old file and renamed over it by mmdb build.
    _mmdb_build(custom, f"scanner={lists / 'scanners-v2.txt'}")
    assert _eventually(lambda: status("192.0.2.10") == 403), "the new database is used"
    assert status("198.51.100.7") == 200
    assert _risk_upstream(_get(envoy, host, "192.0.2.200")) == "0"  # crawler is gone
    swapped = _geoip_state(sidecar, "/policies")
    assert swapped["state"] == "loaded"
    assert f"GeoIP database {custom} replaced" in sidecar.process.log_path.read_text()

    # A truncated download renamed into place: refused, the last good file serves.
    good = custom.read_bytes()
    partial = geoip_dir / ".custom.mmdb.partial"
    partial.write_bytes(good[: len(good) // 2])
    os.replace(partial, custom)

    def stale() -> dict[str, Any] | None:
        database = _geoip_state(sidecar, "/readyz")
        return database if database["state"] == "stale" else None

    refused = _eventually(stale)
    assert refused, "the truncated file is reported"
    assert refused["lastError"]
    assert refused["type"] == "AbuseSidecar-Categories"
    assert _geoip_state(sidecar, "/policies")["state"] == "stale"
    assert sidecar.admin_get("/readyz")[0] == 200
    assert status("192.0.2.10") == 403
    assert status("198.51.100.7") == 200
    assert f"GeoIP database {custom} refused: " in sidecar.process.log_path.read_text()

    # A good file again: loaded, and it serves.
    _mmdb_build(custom, f"scanner={lists / 'scanners.txt'}")
    assert _eventually(lambda: status("198.51.100.7") == 403)
    assert status("192.0.2.10") == 200
    assert _geoip_state(sidecar, "/readyz")["state"] == "loaded"


def test_maxmind_database_replaced_by_another_build(
    stack: Stack, tmp_path: Path, maxmind: list[Path]
) -> None:
    anonymous = tmp_path / "anonymous.mmdb"
    shutil.copyfile(maxmind[0], anonymous)
    (tmp_path / "policies.yaml").write_text(RULES)
    app = stack.upstream()
    sidecar = stack.sidecar(
        policies=[tmp_path / "policies.yaml"],
        geoip=[anonymous],
        env={"ABUSE_SIDECAR_GEOIP_POLL_SECONDS": "0.2"},
    )
    envoy = stack.envoy(sidecar, app)
    host = "rules.example.test"
    assert _get(envoy, host, IP_TOR_OUTSIDE_ALLOW).status_code == 403
    assert _geoip_state(sidecar, "/readyz")["type"] == "GeoIP2-Anonymous-IP"

    # geoipupdate's way: download beside the file, rename over it. The new edition
    # (here a category build) no longer lists the Tor exit.
    lists = tmp_path / "tor.txt"
    lists.write_text(f"{IP_CLEAN}/32\n")
    staged = tmp_path / "staged.mmdb"
    _mmdb_build(staged, f"tor={lists}")
    os.replace(staged, anonymous)

    assert _eventually(lambda: _get(envoy, host, IP_TOR_OUTSIDE_ALLOW).status_code == 200)
    _assert_denied(
        _get(envoy, host, IP_CLEAN), "anonymous_ip", "ipReputation.denyCategories", "iprep/rules"
    )
    assert _geoip_state(sidecar, "/readyz")["type"] == "AbuseSidecar-Categories"


def test_sidecar_refuses_to_start_on_an_unusable_database(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a MaxMind database\n")
    (tmp_path / "policies.yaml").write_text(CUSTOM)
    argv = [
        *sidecar_command(),
        "serve",
        "--policies",
        str(tmp_path / "policies.yaml"),
        "--geoip",
        str(broken),
        "--grpc-listen",
        f"127.0.0.1:{free_port()}",
        "--admin-listen",
        f"127.0.0.1:{free_port()}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert f"GeoIP database {broken}" in result.stdout + result.stderr
