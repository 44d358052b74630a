"""``mmdb build``: our writer read back by the real reader (C extension and pure Python)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import maxminddb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.iprep.build import (
    DATABASE_TYPE,
    MmdbBuildError,
    build_mmdb,
    encode_mmdb,
    parse_category_args,
    read_cidr_list,
)
from sidecar.iprep.mmdb import GeoIpDatabases

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_cidr_list_format(tmp_path: Path) -> None:
    listed = _write(
        tmp_path / "list.txt",
        "# Tor exits, fetched 2026-11-23\n"
        "\n"
        "203.0.113.7\n"
        "  198.51.100.0/24   # a whole range\n"
        "10.1.2.3/8\n"
        "2001:db8::/32\n"
        "2001:db8::1\n",
    )
    assert read_cidr_list(listed) == [
        ipaddress.ip_network("203.0.113.7/32"),
        ipaddress.ip_network("198.51.100.0/24"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("2001:db8::1/128"),
    ]


def test_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    listed = _write(tmp_path / "list.txt", "203.0.113.7\n# ok\n203.0.113.300\n")
    with pytest.raises(MmdbBuildError, match=r"list\.txt:3: '203\.0\.113\.300' is not an IP"):
        read_cidr_list(listed)


def test_unreadable_list_is_named(tmp_path: Path) -> None:
    with pytest.raises(MmdbBuildError, match=r"absent\.txt: cannot read"):
        read_cidr_list(tmp_path / "absent.txt")


def test_category_arguments() -> None:
    assert parse_category_args(["tor=a.txt", "scanner=b.txt", "scanner=c=d.txt"]) == {
        "tor": [Path("a.txt")],
        "scanner": [Path("b.txt"), Path("c=d.txt")],
    }


@pytest.mark.parametrize(
    "argument", ["tor", "tor=", "=a.txt", "Tor=a.txt", "9lives=a.txt", "a b=x"]
)
def test_bad_category_arguments(argument: str) -> None:
    with pytest.raises(MmdbBuildError):
        parse_category_args([argument])


def test_nothing_to_build_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MmdbBuildError, match="no --category"):
        build_mmdb(tmp_path / "out.mmdb", {})


def test_round_trip_through_geoip_databases(tmp_path: Path) -> None:
    tor = _write(tmp_path / "tor.txt", "203.0.113.7\n2001:db8:7::/48\n")
    cloud = _write(tmp_path / "cloud.txt", "203.0.113.0/24\n198.51.100.0/22\n")
    out = tmp_path / "custom.mmdb"
    written = build_mmdb(out, {"tor": [tor], "cloud": [cloud]}, build_epoch=1_800_000_000)
    assert written == 4

    geoip = GeoIpDatabases([out])
    assert geoip.lookup("203.0.113.7").categories == ("cloud", "tor")
    assert geoip.lookup("203.0.113.8").categories == ("cloud",)
    assert geoip.lookup("198.51.103.255").categories == ("cloud",)
    assert geoip.lookup("198.51.104.0").categories == ()
    assert geoip.lookup("2001:db8:7:ffff::1").categories == ("tor",)
    assert geoip.lookup("2001:db8:8::1").categories == ()
    assert geoip.lookup("::ffff:203.0.113.7").categories == ("cloud", "tor")
    assert geoip.knows_categories
    (described,) = geoip.describe()
    assert described["type"] == DATABASE_TYPE
    assert described["kind"] == "categories"
    assert described["buildDate"] == "2027-01-15T08:00:00Z"


def test_records_name_every_category_in_argument_order(tmp_path: Path) -> None:
    out = tmp_path / "custom.mmdb"
    build_mmdb(
        out,
        {
            "scanner": [_write(tmp_path / "s.txt", "203.0.113.0/24\n")],
            "botnet": [_write(tmp_path / "b.txt", "203.0.113.128/25\n")],
        },
    )
    with maxminddb.open_database(str(out), maxminddb.MODE_FILE) as reader:
        assert reader.get("203.0.113.5") == {"category": "scanner"}
        assert reader.get("203.0.113.200") == {
            "category": "scanner",
            "categories": ["scanner", "botnet"],
        }
        assert reader.get("192.0.2.1") is None


def test_output_replaces_the_old_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "custom.mmdb"
    out.write_bytes(b"old")
    build_mmdb(out, {"tor": [_write(tmp_path / "tor.txt", "203.0.113.7\n")]})
    assert out.read_bytes().find(b"MaxMind.com") > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.mmdb", "tor.txt"]
    assert out.stat().st_mode & 0o777 == 0o644


def test_empty_list_builds_a_database_that_knows_nothing(tmp_path: Path) -> None:
    out = tmp_path / "empty.mmdb"
    assert build_mmdb(out, {"tor": [_write(tmp_path / "tor.txt", "# none today\n")]}) == 0
    geoip = GeoIpDatabases([out])
    assert geoip.lookup("203.0.113.7").categories == ()
    assert geoip.lookup("2001:db8::1").categories == ()


def test_ipv6_spellings_of_ipv4_are_ipv4(tmp_path: Path) -> None:
    image = encode_mmdb(
        {
            "mapped": [ipaddress.ip_network("::ffff:203.0.113.0/120")],
            "compat": [ipaddress.ip_network("::198.51.100.7/128")],
        }
    )
    assert _lookup(image, "203.0.113.9", tmp_path) == {"mapped"}
    assert _lookup(image, "::ffff:203.0.113.9", tmp_path) == {"mapped"}
    assert _lookup(image, "198.51.100.7", tmp_path) == {"compat"}


def test_ipv6_network_covering_the_ipv4_space_covers_ipv4(tmp_path: Path) -> None:
    image = encode_mmdb(
        {"everything": [ipaddress.ip_network("::/0")], "v4": [ipaddress.ip_network("10.0.0.0/8")]}
    )
    assert _lookup(image, "10.1.1.1", tmp_path) == {"everything", "v4"}
    assert _lookup(image, "192.0.2.1", tmp_path) == {"everything"}
    assert _lookup(image, "::ffff:192.0.2.1", tmp_path) == {"everything"}
    assert _lookup(image, "2001:db8::1", tmp_path) == {"everything"}


@pytest.mark.parametrize("record_size", [24, 28, 32])
@pytest.mark.parametrize("mode", [maxminddb.MODE_MMAP_EXT, maxminddb.MODE_FILE])
def test_every_record_size_reads_back(tmp_path: Path, record_size: int, mode: int) -> None:
    image = encode_mmdb(
        {
            "a": [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/33")],
            "b": [ipaddress.ip_network("203.0.113.64/26")],
        },
        record_size=record_size,
    )
    path = tmp_path / "db.mmdb"
    path.write_bytes(image)
    with maxminddb.open_database(str(path), mode) as reader:
        metadata = reader.metadata()
        assert metadata.record_size == record_size
        assert metadata.ip_version == 6
        assert metadata.database_type == DATABASE_TYPE
        assert metadata.binary_format_major_version == 2
        assert reader.get_with_prefix_len("203.0.113.70") == (
            {"category": "a", "categories": ["a", "b"]},
            26,
        )
        assert reader.get("203.0.113.1") == {"category": "a"}
        assert reader.get("2001:db8:7fff::1") == {"category": "a"}
        assert reader.get("2001:db8:8000::1") is None


def test_unknown_record_size_is_refused() -> None:
    with pytest.raises(ValueError, match="record_size 20"):
        encode_mmdb({"a": [ipaddress.ip_network("203.0.113.0/24")]}, record_size=20)


def _lookup(image: bytes, ip: str, directory: Path) -> set[str]:
    path = directory / "lookup.mmdb"
    path.write_bytes(image)
    with maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT) as reader:
        record = reader.get(ip)
    return _categories(record)


def _categories(record: object) -> set[str]:
    """The categories a category-database record names (None: no record)."""
    if record is None:
        return set()
    assert isinstance(record, dict)
    names = record.get("categories", [record["category"]])
    assert isinstance(names, list)
    return {str(name) for name in names}


# -- against an oracle ------------------------------------------------------------

V4 = st.builds(
    lambda value, prefix: ipaddress.IPv4Network((value, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
)
V6 = st.builds(
    lambda value, prefix: ipaddress.IPv6Network((value, prefix), strict=False),
    st.integers(2**125, 2**126 - 1),  # 2000::/3: global unicast, clear of the IPv4 aliases
    st.integers(4, 128),
)
NETWORKS = st.lists(st.one_of(V4, V6), max_size=6)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lists=st.dictionaries(st.sampled_from(["tor", "vpn", "scanner"]), NETWORKS, min_size=1),
    probes=st.lists(
        st.one_of(
            st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
            st.integers(2**125, 2**126 - 1).map(ipaddress.IPv6Address),
        ),
        max_size=8,
    ),
)
def test_every_address_gets_exactly_the_categories_that_list_it(
    tmp_path: Path,
    lists: dict[str, list[IPNetwork]],
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    path = tmp_path / "oracle.mmdb"
    path.write_bytes(encode_mmdb(lists))
    edges = [
        address
        for networks in lists.values()
        for network in networks
        for address in (network.network_address, network.broadcast_address)
    ]
    with maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT) as reader:
        for address in [*probes, *edges]:
            expected = {
                name
                for name, networks in lists.items()
                if any(n.version == address.version and address in n for n in networks)
            }
            record = reader.get(str(address))
            assert _categories(record) == expected, str(address)
