"""GeoIpDatabases against MaxMind's test databases (addresses: testdata/mmdb/README.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from sidecar.errors import ConfigurationError
from sidecar.iprep.mmdb import (
    NO_FACTS,
    DatabaseKind,
    GeoIpDatabaseError,
    GeoIpDatabases,
    IpFacts,
    database_kind,
)


@pytest.fixture
def geoip(test_databases: list[Path]) -> GeoIpDatabases:
    return GeoIpDatabases(test_databases)


@pytest.mark.parametrize(
    ("ip", "categories"),
    [
        ("65.0.0.1", ("anonymous", "tor")),
        ("65.7.255.255", ("anonymous", "tor")),
        ("1.124.213.1", ("anonymous", "tor", "vpn")),
        ("6.1.0.0", ("anonymous", "vpn")),
        ("6.1.0.2", ("anonymous", "hosting")),
        ("6.1.0.3", ("anonymous", "public_proxy")),
        ("6.1.0.4", ("anonymous", "residential_proxy")),
        (
            "81.2.69.142",
            ("anonymous", "hosting", "public_proxy", "residential_proxy", "tor", "vpn"),
        ),
        ("2001:480:3a::1", ("anonymous", "public_proxy")),
        # Listed nowhere: the reader returns {} (public) or None (reserved).
        ("65.8.0.0", ()),
        ("6.1.0.5", ()),
        ("10.0.0.1", ()),
    ],
)
def test_anonymous_ip_categories(
    geoip: GeoIpDatabases, ip: str, categories: tuple[str, ...]
) -> None:
    assert geoip.lookup(ip).categories == categories


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("175.16.199.1", "CN"),
        ("89.160.20.112", "SE"),
        ("81.2.69.142", "GB"),
        ("2.125.160.216", "GB"),  # registered in FR: location wins
        ("217.65.48.1", "GI"),
        ("2001:218::1", "JP"),
        ("65.0.0.1", None),
        ("214.1.1.1", None),
    ],
)
def test_country(geoip: GeoIpDatabases, ip: str, country: str | None) -> None:
    assert geoip.lookup(ip).country == country


@pytest.mark.parametrize(
    ("ip", "asn"),
    [("89.160.20.112", 29518), ("216.160.83.56", 209), ("1.0.0.1", 15169), ("1.128.0.1", 1221)],
)
def test_asn(geoip: GeoIpDatabases, ip: str, asn: int) -> None:
    assert geoip.lookup(ip).asn == asn


def test_clean_address_has_facts_but_no_category(geoip: GeoIpDatabases) -> None:
    assert geoip.lookup("216.160.83.56") == IpFacts((), "US", 209)


@pytest.mark.parametrize("ip", ["10.0.0.1", "203.0.113.1", "", "not-an-ip", "1.2.3.4.5"])
def test_unknown_or_invalid_address_has_no_facts(geoip: GeoIpDatabases, ip: str) -> None:
    assert geoip.lookup(ip) is NO_FACTS


def test_ipv4_mapped_address_is_its_ipv4(geoip: GeoIpDatabases) -> None:
    assert geoip.lookup("::ffff:65.0.0.1") == geoip.lookup("65.0.0.1")
    assert geoip.lookup("::ffff:59a0:1470") == geoip.lookup("89.160.20.112")


def test_first_database_with_a_country_wins(mmdb: dict[str, Path]) -> None:
    # 216.160.83.64/29 is in City (US) but not in Country; 217.65.48.0/29 the reverse.
    both = GeoIpDatabases([mmdb["country"], mmdb["city"]])
    assert both.lookup("216.160.83.65").country == "US"
    assert both.lookup("217.65.48.1").country == "GI"
    assert GeoIpDatabases([mmdb["country"]]).lookup("216.160.83.65").country is None


def test_kinds_and_what_they_know(mmdb: dict[str, Path], geoip: GeoIpDatabases) -> None:
    assert geoip.kinds == {DatabaseKind.ANONYMOUS_IP, DatabaseKind.GEO, DatabaseKind.ASN}
    assert geoip.knows_categories
    assert geoip.knows_country
    assert geoip.knows_asn
    only_asn = GeoIpDatabases([mmdb["asn"]])
    assert not only_asn.knows_categories
    assert not only_asn.knows_country
    assert only_asn.knows_asn


@pytest.mark.parametrize(
    ("database_type", "kind"),
    [
        ("GeoIP2-Anonymous-IP", DatabaseKind.ANONYMOUS_IP),
        ("GeoIP-Anonymous-Plus", DatabaseKind.ANONYMOUS_IP),
        ("GeoLite2-ASN", DatabaseKind.ASN),
        ("GeoIP2-ISP", DatabaseKind.ASN),
        ("GeoIP2-Country", DatabaseKind.GEO),
        ("GeoLite2-City", DatabaseKind.GEO),
        ("DBIP-Country-Lite", DatabaseKind.GEO),
        ("GeoIP2-Enterprise", DatabaseKind.GEO),
        ("AbuseSidecar-Categories", DatabaseKind.CATEGORIES),
        ("GeoIP2-Connection-Type", None),
        ("GeoIP2-Domain", None),
    ],
)
def test_database_kind(database_type: str, kind: DatabaseKind | None) -> None:
    assert database_kind(database_type) == kind


def test_unsupported_database_type_is_refused_at_start(mmdb: dict[str, Path]) -> None:
    with pytest.raises(
        GeoIpDatabaseError, match="unsupported database_type 'GeoIP2-Connection-Type'"
    ):
        GeoIpDatabases([mmdb["anonymous"], mmdb["connection_type"]])


def test_missing_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.mmdb: cannot read"):
        GeoIpDatabases([tmp_path / "missing.mmdb"])


def test_not_a_database_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(b"this is not a MaxMind DB\n" * 100)
    with pytest.raises(GeoIpDatabaseError, match="not a valid MaxMind DB"):
        GeoIpDatabases([path])


def test_corrupt_search_tree_is_refused(mmdb: dict[str, Path], tmp_path: Path) -> None:
    image = bytearray(mmdb["country"].read_bytes())
    image[: len(image) // 2] = b"\xff" * (len(image) // 2)  # nodes point past the file
    path = tmp_path / "corrupt.mmdb"
    path.write_bytes(bytes(image))
    with pytest.raises(GeoIpDatabaseError, match="corrupt MaxMind DB"):
        GeoIpDatabases([path])


def test_describe(mmdb: dict[str, Path], geoip: GeoIpDatabases) -> None:
    described = {entry["type"]: entry for entry in geoip.describe()}
    assert set(described) == {"GeoIP2-Anonymous-IP", "GeoIP2-Country", "GeoLite2-ASN"}
    anonymous = described["GeoIP2-Anonymous-IP"]
    assert anonymous["path"] == str(mmdb["anonymous"])
    assert anonymous["kind"] == "anonymous_ip"
    assert anonymous["buildDate"] == "2026-02-04T22:49:29Z"  # build_epoch 1770245369
    assert anonymous["ipVersion"] == 6
    assert anonymous["state"] == "loaded"
    assert anonymous["lastError"] is None


def test_lookups_are_cached_and_the_cache_is_bounded(test_databases: list[Path]) -> None:
    geoip = GeoIpDatabases(test_databases, cache_size=2)
    first = geoip.lookup("65.0.0.1")
    assert geoip.lookup("65.0.0.1") is first
    geoip.lookup("89.160.20.112")
    geoip.lookup("175.16.199.1")
    info = geoip.cache_info()
    assert info["hits"] == 1
    assert info["misses"] == 3
    assert info["size"] == 2


def test_no_databases_means_no_facts() -> None:
    geoip = GeoIpDatabases([])
    assert not geoip.available
    assert geoip.lookup("65.0.0.1") is NO_FACTS
    assert geoip.describe() == []


# -- replacement on disk ---------------------------------------------------------


def _replace(source: Path, target: Path, data: bytes | None = None) -> None:
    """Install a file the way geoipupdate does: write beside it, rename over it."""
    temporary = target.with_suffix(".tmp")
    if data is None:
        shutil.copyfile(source, temporary)
    else:
        temporary.write_bytes(data)
    os.replace(temporary, target)


def _mapped_files(directory: Path) -> list[str]:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return [line.strip() for line in maps if str(directory) in line]


def test_replacing_a_file_switches_to_it_and_closes_the_old_one(
    mmdb: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "geo.mmdb"
    shutil.copyfile(mmdb["asn"], path)
    geoip = GeoIpDatabases([path])
    assert geoip.lookup("89.160.20.112") == IpFacts((), None, 29518)
    assert geoip.reload_changed() == []

    _replace(mmdb["country"], path)
    assert geoip.reload_changed() == [path]
    # The cached answer for this address belonged to the old file.
    assert geoip.lookup("89.160.20.112") == IpFacts((), "SE", None)
    assert geoip.describe()[0]["type"] == "GeoIP2-Country"
    assert geoip.knows_country
    assert not geoip.knows_asn
    # The old file is unmapped: only the new one remains, and it is not "(deleted)".
    mapped = _mapped_files(tmp_path)
    assert mapped, "the serving database should be memory-mapped"
    assert not [line for line in mapped if "(deleted)" in line]
    geoip.close()
    assert _mapped_files(tmp_path) == []


def test_truncated_replacement_is_refused_and_old_file_keeps_serving(
    mmdb: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "country.mmdb"
    shutil.copyfile(mmdb["country"], path)
    geoip = GeoIpDatabases([path])
    assert geoip.lookup("175.16.199.1").country == "CN"

    good = mmdb["country"].read_bytes()
    _replace(mmdb["country"], path, good[: len(good) // 2])
    with caplog.at_level(logging.ERROR, logger="sidecar.iprep.mmdb"):
        assert geoip.reload_changed() == []
        assert geoip.reload_changed() == []  # refused once, logged once
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert str(path) in refusals[0].getMessage()
    assert "still serving the previous file" in refusals[0].getMessage()

    assert geoip.lookup("175.16.199.1").country == "CN"
    assert geoip.lookup("202.196.224.1").country == "PH"  # not cached before
    entry = geoip.describe()[0]
    assert entry["state"] == "stale"
    assert "not a valid MaxMind DB" in entry["lastError"]

    _replace(mmdb["country"], path)
    assert geoip.reload_changed() == [path]
    assert geoip.describe()[0]["state"] == "loaded"
    assert geoip.describe()[0]["lastError"] is None
    assert geoip.lookup("175.16.199.1").country == "CN"


def test_deleted_file_keeps_serving_and_says_so(mmdb: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "anonymous.mmdb"
    shutil.copyfile(mmdb["anonymous"], path)
    geoip = GeoIpDatabases([path])
    path.unlink()
    assert geoip.reload_changed() == []
    assert geoip.lookup("65.0.0.1").categories == ("anonymous", "tor")
    entry = geoip.describe()[0]
    assert entry["state"] == "stale"
    assert "cannot read" in entry["lastError"]


def test_unsupported_replacement_is_refused(mmdb: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "anonymous.mmdb"
    shutil.copyfile(mmdb["anonymous"], path)
    geoip = GeoIpDatabases([path])
    _replace(mmdb["connection_type"], path)
    assert geoip.reload_changed() == []
    assert "unsupported database_type" in geoip.describe()[0]["lastError"]
    assert geoip.lookup("65.0.0.1").categories == ("anonymous", "tor")


async def test_poll_task_picks_up_a_replacement(mmdb: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    shutil.copyfile(mmdb["asn"], path)
    geoip = GeoIpDatabases([path], poll_seconds=0.02)
    await geoip.start()
    try:
        assert geoip.lookup("89.160.20.112").country is None
        _replace(mmdb["country"], path)
        async with asyncio.timeout(5):
            while geoip.lookup("89.160.20.112").country != "SE":
                await asyncio.sleep(0.01)
    finally:
        await geoip.aclose()
    assert geoip.lookup("89.160.20.112") is NO_FACTS
    assert _mapped_files(tmp_path) == []
