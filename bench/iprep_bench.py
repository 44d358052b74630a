"""Micro-benchmark of IP intelligence on the request path.

Targets (issue 4): a cached lookup under 5 µs, an uncached one under 20 µs.

    .venv/bin/python bench/iprep_bench.py [--mmdb-dir ../shared/testdata/mmdb]

Databases: MaxMind's Anonymous-IP, City (the largest records) and ASN test files
plus a category database built here, so an uncached lookup walks four trees and
decodes up to four records. "Uncached" addresses are all distinct and chosen where
City and ASN both have a record (214.78.120.0/22, 67.43.156.0/24, 1.128.0.0/11), the
expensive case; a fresh GeoIpDatabases (empty cache) is used for each round.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.iprep.build import build_mmdb
from sidecar.iprep.client_ip import client_ip
from sidecar.iprep.mmdb import GeoIpDatabases
from sidecar.model.policy import IpReputationSpec
from sidecar.pipeline.context import RequestContext
from sidecar.steps.ip_reputation import build_ip_reputation_step
from tests.shared_data import mmdb_dir

DEFAULT_MMDB_DIR = mmdb_dir()  # ../shared/testdata/mmdb, else the copy in tests/data
ROUNDS = 7


def per_call_us(function: Callable[[], object], calls: int) -> float:
    """Median over rounds of the mean cost of one call, in microseconds."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter_ns() - start) / calls / 1000)
    return statistics.median(samples)


def uncached_us(paths: list[Path], addresses: list[str]) -> float:
    samples = []
    for _ in range(ROUNDS):
        geoip = GeoIpDatabases(paths, cache_size=len(addresses) * 2)
        lookup = geoip.lookup
        start = time.perf_counter_ns()
        for address in addresses:
            lookup(address)
        samples.append((time.perf_counter_ns() - start) / len(addresses) / 1000)
        geoip.close()
    return statistics.median(samples)


def expensive_addresses() -> list[str]:
    addresses: list[str] = []
    for network in ("214.78.120.0/22", "67.43.156.0/24"):
        addresses += [str(a) for a in ipaddress.ip_network(network)]
    base = int(ipaddress.ip_address("1.128.0.0"))
    addresses += [str(ipaddress.ip_address(base + i * 997)) for i in range(1000)]
    return addresses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmdb-dir", type=Path, default=DEFAULT_MMDB_DIR)
    options = parser.parse_args(argv)
    directory: Path = options.mmdb_dir

    with tempfile.TemporaryDirectory() as scratch:
        listed = Path(scratch) / "scanners.txt"
        networks = [f"198.{i // 256}.{i % 256}.0/24" for i in range(20_000)]
        listed.write_text("\n".join(networks) + "\n2001:db8::/32\n", encoding="utf-8")
        custom = Path(scratch) / "custom.mmdb"
        start = time.perf_counter()
        build_mmdb(custom, {"scanner": [listed]})
        build_seconds = time.perf_counter() - start

        paths = [
            directory / "GeoIP2-Anonymous-IP-Test.mmdb",
            directory / "GeoIP2-City-Test.mmdb",
            directory / "GeoLite2-ASN-Test.mmdb",
            custom,
        ]
        geoip = GeoIpDatabases(paths)
        hot = "214.78.120.1"
        geoip.lookup(hot)
        cached = per_call_us(lambda: geoip.lookup(hot), 200_000)
        uncached = uncached_us(paths, expensive_addresses())

        spec = IpReputationSpec.model_validate(
            {
                "denyCategories": ["tor", "scanner"],
                "denyCountries": ["KP"],
                "denyASNs": [64512],
                "denyCIDRs": ["203.0.113.0/24", "2001:db8:bad::/48"],
                "allowCIDRs": ["10.0.0.0/8"],
                "risk": {"tor": 80, "vpn": 30, "hosting": 40},
            }
        )
        step = build_ip_reputation_step("bench/policy", spec, geoip)
        ctx = RequestContext("GET", "/", "/", "", "h", {}, b"", hot, client_ip=hot)
        step_us = per_call_us(lambda: step.evaluate(ctx, []), 100_000)
        xff_us = per_call_us(lambda: client_ip("10.0.0.2", "6.6.6.6, 214.78.120.1", 1), 200_000)
        source_us = per_call_us(lambda: client_ip("214.78.120.1", None, 0), 200_000)
        geoip.close()

    rows = [
        ("lookup, cached (hot address)", cached, 5.0),
        ("lookup, uncached (4 databases, City+ASN hit)", uncached, 20.0),
        ("ipReputation step, cached address, 6 rules", step_us, None),
        ("client_ip, xffTrustedHops=1", xff_us, None),
        ("client_ip, source address", source_us, None),
    ]
    print(f"python {sys.version.split()[0]}, median of {ROUNDS} rounds")
    failed = False
    for name, value, target in rows:
        verdict = ""
        if target is not None:
            ok = value < target
            failed |= not ok
            verdict = f"  (target < {target:g} µs: {'ok' if ok else 'MISSED'})"
        print(f"{name:<48} {value:8.2f} µs{verdict}")
    print(f"{'mmdb build, 20,001 networks':<48} {build_seconds * 1000:8.0f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
