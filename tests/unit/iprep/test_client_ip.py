from __future__ import annotations

import pytest

from sidecar.iprep.client_ip import client_ip, parse_forwarded_entry

SOURCE = "192.0.2.10"


def test_zero_hops_uses_source_address_whatever_the_header_says() -> None:
    assert client_ip(SOURCE, "198.51.100.1, 203.0.113.7", 0) == SOURCE


def test_one_hop_uses_the_rightmost_entry() -> None:
    assert client_ip(SOURCE, "198.51.100.1, 203.0.113.7", 1) == "203.0.113.7"


def test_two_hops_use_the_second_entry_from_the_right() -> None:
    assert client_ip(SOURCE, "198.51.100.1, 203.0.113.7, 10.0.0.2", 2) == "203.0.113.7"


def test_spoofed_left_entries_are_ignored() -> None:
    xff = "1.1.1.1, 2.2.2.2, 3.3.3.3, 203.0.113.7"
    assert client_ip(SOURCE, xff, 1) == "203.0.113.7"


def test_too_few_entries_fall_back_to_source() -> None:
    assert client_ip(SOURCE, "203.0.113.7", 2) == SOURCE


@pytest.mark.parametrize("xff", [None, "", "   "])
def test_missing_header_falls_back_to_source(xff: str | None) -> None:
    assert client_ip(SOURCE, xff, 1) == SOURCE


@pytest.mark.parametrize(
    "xff",
    [
        "198.51.100.1, unknown",
        "198.51.100.1, ",
        "198.51.100.1,,",
        "198.51.100.1, _hidden",
        "198.51.100.1, 203.0.113.300",
    ],
)
def test_non_address_entry_falls_back_to_source_never_to_a_left_entry(xff: str) -> None:
    assert client_ip(SOURCE, xff, 1) == SOURCE


def test_empty_entries_count_as_positions() -> None:
    # "a,,b" has three entries; the second from the right is empty: not an address.
    assert client_ip(SOURCE, "198.51.100.1,,203.0.113.7", 2) == SOURCE
    assert client_ip(SOURCE, "198.51.100.1,,203.0.113.7", 3) == "198.51.100.1"


def test_merged_repeated_headers_count_every_entry() -> None:
    # Envoy joins repeated headers with ","; the client's header comes first.
    assert client_ip(SOURCE, "6.6.6.6,203.0.113.7", 1) == "203.0.113.7"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("  203.0.113.7\t", "203.0.113.7"),
        ("203.0.113.7:8080", "203.0.113.7"),
        ("203.0.113.7:0", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:443", "203.0.113.7"),
        ("::ffff:cb00:7107", "203.0.113.7"),
    ],
)
def test_accepted_entry_forms(entry: str, expected: str) -> None:
    assert parse_forwarded_entry(entry) == expected
    assert client_ip(SOURCE, f"198.51.100.1, {entry}", 1) == expected


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "unknown",
        "010.0.0.1",  # leading zero: octal to some parsers
        "203.0.113.7:",
        "203.0.113.7:65536",
        "203.0.113.7:http",
        "[203.0.113.7]",  # brackets are for IPv6
        "[2001:db8::1",
        "[2001:db8::1]443",
        "fe80::1%eth0",
        "[fe80::1%25eth0]",
        "2001:db8::1:443:",
        "example.com",
        "203.0.113.7 198.51.100.1",
        "203.0.113.7:٣",  # non-ASCII digit
        "1" * 100,
    ],
)
def test_rejected_entry_forms(entry: str) -> None:
    assert parse_forwarded_entry(entry) is None
    assert client_ip(SOURCE, f"198.51.100.1, {entry}", 1) == SOURCE


def test_source_address_is_canonical() -> None:
    assert client_ip("::ffff:192.0.2.10", None, 0) == "192.0.2.10"
    assert client_ip("2001:DB8::0:1", None, 0) == "2001:db8::1"


def test_source_that_is_not_an_address_is_returned_unchanged() -> None:
    assert client_ip("", None, 0) == ""
    assert client_ip("/run/envoy.sock", "203.0.113.7, unknown", 1) == "/run/envoy.sock"
