"""IP intelligence on the command line: ``check --geoip`` and ``mmdb build``, run as a
user runs them (the installed console script, in a subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import mmdb_dir

MMDB_DIR = mmdb_dir()

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: shop, namespace: demo}
spec:
  hosts: [api.example.com]
  clientIP: {xffTrustedHops: 1}
  ipReputation:
    denyCategories: [tor, scanner]
    denyCountries: [CN]
    risk: {tor: 80, hosting: 40, scanner: 70}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("abuse-sidecar", path=str(Path(sys.executable).parent))
    assert exe, "the console script abuse-sidecar is installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


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


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def check(policy: Path, geoip: list[Path], *extra: str) -> tuple[int, dict[str, Any]]:
    argv = ["check", "--policies", str(policy)]
    for path in geoip:
        argv += ["--geoip", str(path)]
    argv += ["--method", "GET", "--path", "/items", "--host", "api.example.com"]
    result = run(*argv, *extra, "--output", "json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def ip_step(out: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in out["steps"] if s["step"] == "ip_reputation"]
    assert isinstance(step, dict)
    return step


def test_check_denies_a_tor_exit_and_explains_the_lookup(policy: Path, maxmind: list[Path]) -> None:
    code, out = check(policy, maxmind, "--ip", "65.0.0.1")
    assert code == 1
    assert out["decision"] == "deny"
    assert out["status"] == 403
    assert out["reason"] == "anonymous_ip"
    assert out["rule"] == "ipReputation.denyCategories"
    assert out["policy"] == "demo/shop"
    step = ip_step(out)
    assert step["verdict"] == "deny"
    assert step["ip"] == "65.0.0.1"
    assert "tor" in step["categories"]
    assert step["risk"] == 80
    assert step["lookups"] == {"categories": True, "country": True, "asn": True}


def test_check_allows_a_clean_address_with_its_country_and_asn(
    policy: Path, maxmind: list[Path]
) -> None:
    code, out = check(policy, maxmind, "--ip", "89.160.20.112")
    assert code == 0
    assert out["decision"] == "allow"
    assert out["risk"] == 0
    step = ip_step(out)
    assert step["verdict"] == "allow"
    assert step["country"] == "SE"
    assert step["asn"] == 29518
    assert step["categories"] == []


def test_check_uses_the_trusted_forwarded_entry(policy: Path, maxmind: list[Path]) -> None:
    code, out = check(
        policy,
        maxmind,
        "--ip",
        "10.0.0.2",
        "--header",
        "X-Forwarded-For: 89.160.20.112, 175.16.199.1",
    )
    assert code == 1
    assert out["reason"] == "country_denied"
    assert ip_step(out)["ip"] == "175.16.199.1"
    assert ip_step(out)["country"] == "CN"


def test_check_without_databases_reports_lookups_unavailable(policy: Path) -> None:
    code, out = check(policy, [], "--ip", "65.0.0.1")
    assert code == 0
    assert ip_step(out)["lookups"] == "unavailable"


def test_mmdb_build_round_trips_through_check(
    tmp_path: Path, policy: Path, maxmind: list[Path]
) -> None:
    scanners = tmp_path / "scanners.txt"
    scanners.write_text("# scanners seen last week\n198.51.100.0/24\n2001:db8:5ca::/48\n")
    hosting = tmp_path / "cloud.txt"
    hosting.write_text("192.0.2.0/24\n")
    custom = tmp_path / "custom.mmdb"
    built = run(
        "mmdb",
        "build",
        "--out",
        str(custom),
        "--category",
        f"scanner={scanners}",
        "--category",
        f"hosting={hosting}",
    )
    assert built.returncode == 0, built.stderr
    assert str(custom) in built.stdout

    code, out = check(policy, [*maxmind, custom], "--ip", "2001:db8:5ca::1")
    assert code == 1
    assert out["reason"] == "anonymous_ip"
    assert ip_step(out)["categories"] == ["scanner"]
    assert ip_step(out)["risk"] == 70

    code, out = check(policy, [custom], "--ip", "192.0.2.77")
    assert code == 0
    assert out["risk"] == 40  # a custom list can feed a MaxMind category's score

    code, out = check(policy, [custom], "--ip", "198.51.101.1")
    assert code == 0
    assert ip_step(out)["categories"] == []


def test_mmdb_build_names_the_bad_line(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("198.51.100.0/24\nnot-a-network\n")
    out = tmp_path / "out.mmdb"
    result = run("mmdb", "build", "--out", str(out), "--category", f"scanner={listed}")
    assert result.returncode == 2
    assert f"{listed}:2: 'not-a-network'" in result.stderr
    assert not out.exists()


def test_check_refuses_a_file_that_is_not_a_maxmind_database(tmp_path: Path, policy: Path) -> None:
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_text("hello\n")
    result = run(
        "check",
        "--policies",
        str(policy),
        "--geoip",
        str(bogus),
        "--method",
        "GET",
        "--path",
        "/",
        "--ip",
        "65.0.0.1",
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith(f"abuse-sidecar check: GeoIP database {bogus}: ")
