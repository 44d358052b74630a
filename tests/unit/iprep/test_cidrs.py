from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.iprep.cidrs import CidrSet, address_to_int


def test_ipv4_and_ipv6_membership() -> None:
    table = CidrSet.compile(["10.0.0.0/8", "203.0.113.7", "2001:db8::/32"])
    assert "10.255.0.1" in table
    assert "203.0.113.7" in table
    assert "203.0.113.8" not in table
    assert "2001:db8:ffff::1" in table
    assert "2001:db9::1" not in table
    assert table.size == 3


def test_match_names_the_longest_containing_network() -> None:
    table = CidrSet.compile(["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"])
    assert table.match("10.1.2.3") == "10.1.0.0/16"
    assert table.match("10.2.2.3") == "10.0.0.0/8"
    assert table.match("2001:db8::5") == "2001:db8::/32"
    assert table.match("192.0.2.1") is None


def test_host_bits_are_ignored() -> None:
    assert CidrSet.compile(["10.1.2.3/8"]).match("10.200.0.1") == "10.0.0.0/8"


def test_ipv4_mapped_addresses_match_ipv4_rules_both_ways() -> None:
    assert "::ffff:10.1.2.3" in CidrSet.compile(["10.0.0.0/8"])
    assert "10.1.2.3" in CidrSet.compile(["::ffff:10.0.0.0/104"])


def test_default_routes_cover_their_family_only() -> None:
    v4 = CidrSet.compile(["0.0.0.0/0"])
    assert "255.255.255.255" in v4
    assert "2001:db8::1" not in v4
    v6 = CidrSet.compile(["::/0"])
    assert "2001:db8::1" in v6
    assert "192.0.2.1" not in v6


@pytest.mark.parametrize("text", ["", "not-an-ip", "1.2.3.4.5", "fe80::1%eth0", "1.2.3.4\x00"])
def test_non_addresses_match_nothing(text: str) -> None:
    assert text not in CidrSet.compile(["0.0.0.0/0", "::/0"])
    assert address_to_int(text) is None


def test_empty_table_is_falsy() -> None:
    assert not CidrSet.compile([])
    assert CidrSet.compile(["192.0.2.0/24"])


def test_bad_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"\[1\] '10.0.0.0/33'"):
        CidrSet.compile(["10.0.0.0/8", "10.0.0.0/33"])


V4_NETWORKS = st.builds(
    lambda value, prefix: ipaddress.IPv4Network((value, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
V6_NETWORKS = st.builds(
    lambda value, prefix: ipaddress.IPv6Network((value, prefix), strict=False),
    st.integers(2**125, 2**126 - 1),  # 2000::/3, clear of the IPv4-mapped range
    st.integers(0, 128),
)


@given(
    networks=st.lists(st.one_of(V4_NETWORKS, V6_NETWORKS), max_size=12),
    probes=st.lists(
        st.one_of(
            st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
            st.integers(2**125, 2**126 - 1).map(ipaddress.IPv6Address),
        ),
        max_size=12,
    ),
)
def test_membership_agrees_with_ipaddress(
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    table = CidrSet.compile([str(network) for network in networks])
    # Probe the edges of every network too, where off-by-one errors live.
    edges = [n.network_address for n in networks] + [n.broadcast_address for n in networks]
    for address in [*probes, *edges]:
        expected = any(
            address in network for network in networks if network.version == address.version
        )
        assert (str(address) in table) is expected
        matched = table.match(str(address))
        assert (matched is not None) is expected
        if matched is not None:
            assert address in ipaddress.ip_network(matched)
