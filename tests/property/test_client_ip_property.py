"""Properties of the client address choice (CONTRACT.md section 4, "Client IP")."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given
from hypothesis import strategies as st

from sidecar.iprep.client_ip import client_ip

IPv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
IPv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
ADDRESSES = st.one_of(IPv4, IPv6)
PORTS = st.integers(0, 65535)
SPACES = st.sampled_from(["", " ", "  ", "\t"])
HOPS = st.integers(1, 8)
# Anything a client may put in front of the trusted entries, commas included.
CLIENT_TEXT = st.text(
    alphabet=st.sampled_from(list("0123456789abcdef.:[], %unknow\t")), max_size=60
)


def canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@st.composite
def entry_forms(draw: st.DrawFn) -> tuple[str, str]:
    """An X-Forwarded-For entry in one of the accepted spellings, and the address it names."""
    address = draw(ADDRESSES)
    text = str(address) if draw(st.booleans()) else address.exploded
    if isinstance(address, ipaddress.IPv4Address):
        form = text if draw(st.booleans()) else f"{text}:{draw(PORTS)}"
    else:
        form = draw(st.sampled_from([text, text.upper(), f"[{text}]", f"[{text}]:{draw(PORTS)}"]))
    return f"{draw(SPACES)}{form}{draw(SPACES)}", canonical(address)


@given(source=ADDRESSES, header=st.none() | CLIENT_TEXT)
def test_zero_hops_always_answers_the_source_address(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address, header: str | None
) -> None:
    assert client_ip(str(source), header, 0) == canonical(source)


@given(
    source=ADDRESSES,
    client_part=CLIENT_TEXT,
    trusted=st.lists(entry_forms(), min_size=1, max_size=8),
)
def test_entries_left_of_the_trusted_ones_never_matter(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    client_part: str,
    trusted: list[tuple[str, str]],
) -> None:
    hops = len(trusted)
    header = ",".join([client_part, *(form for form, _ in trusted)])
    assert client_ip(str(source), header, hops) == trusted[0][1]


@given(
    source=ADDRESSES,
    entries=st.lists(entry_forms(), max_size=7),
    extra=st.integers(1, 4),
)
def test_too_few_entries_answer_the_source_address(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    entries: list[tuple[str, str]],
    extra: int,
) -> None:
    header = ",".join(form for form, _ in entries) or None
    hops = len(entries) + extra
    assert client_ip(str(source), header, hops) == canonical(source)


def reference(source: str, header: str | None, hops: int) -> str:
    """The contract rule written plainly: the n-th entry from the right, else the source."""
    fallback = canonical(ipaddress.ip_address(source))
    if hops == 0 or header is None:
        return fallback
    entries = header.split(",")
    if len(entries) < hops:
        return fallback
    entry = entries[-hops].strip()
    host = None
    if match := re.fullmatch(r"([0-9.]+)(?::([0-9]{1,5}))?", entry):
        host, port = match.group(1), match.group(2)
    elif match := re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?", entry):
        host, port = match.group(1), match.group(2)
        if ":" not in host:
            return fallback
    elif re.fullmatch(r"[0-9A-Fa-f:.]+", entry):
        host, port = entry, None
    if host is None or (port is not None and int(port) > 65535):
        return fallback
    try:
        return canonical(ipaddress.ip_address(host))
    except ValueError:
        return fallback


@given(source=ADDRESSES, header=st.none() | CLIENT_TEXT, hops=st.integers(0, 8))
def test_matches_the_plain_reading_of_the_contract(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address, header: str | None, hops: int
) -> None:
    assert client_ip(str(source), header, hops) == reference(str(source), header, hops)


@given(
    source=ADDRESSES,
    left=st.lists(st.one_of(entry_forms(), CLIENT_TEXT.map(lambda t: (t, ""))), max_size=4),
    chosen=st.one_of(entry_forms(), CLIENT_TEXT.map(lambda t: (t, ""))),
    right=st.lists(entry_forms(), max_size=4),
)
def test_mixed_headers_match_the_plain_reading(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    left: list[tuple[str, str]],
    chosen: tuple[str, str],
    right: list[tuple[str, str]],
) -> None:
    header = ",".join(form for form, _ in [*left, chosen, *right])
    hops = len(right) + 1
    answer = client_ip(str(source), header, hops)
    assert answer == reference(str(source), header, hops)
    if chosen[1]:
        assert answer == chosen[1]
