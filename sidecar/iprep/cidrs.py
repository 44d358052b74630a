"""CIDR tables compiled once per policy, matched per request in a few dictionary hits.

A table keeps, per IP version and prefix length, the set of network numbers
(address >> host bits). Matching an address shifts it once per distinct prefix
length in the table (a handful in practice, at most 33 or 129) and tests set
membership; the size of the list does not matter.

IPv4-mapped IPv6 (``::ffff:a.b.c.d``), in the table or in a lookup, is treated as
the IPv4 address it carries, so one rule covers both spellings.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CidrSet", "address_to_int"]

_V4_MAPPED = 0xFFFF << 32
_V4_MAPPED_MASK = ((1 << 96) - 1) << 32


@dataclass(frozen=True, slots=True)
class _Family:
    bits: int
    # (prefix length, host bits to shift away, network numbers), longest prefix first
    levels: tuple[tuple[int, int, frozenset[int]], ...]

    def match(self, value: int) -> tuple[int, int] | None:
        for prefix, shift, networks in self.levels:
            number = value >> shift
            if number in networks:
                return prefix, number << shift
        return None


@dataclass(frozen=True, slots=True)
class CidrSet:
    """An immutable set of IPv4 and IPv6 networks."""

    _v4: _Family
    _v6: _Family
    size: int

    @classmethod
    def compile(cls, cidrs: Iterable[str]) -> CidrSet:
        """Build from CIDRs or single addresses; host bits are ignored (``10.1.2.3/8``).

        Raises ValueError naming the bad entry.
        """
        tables: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        count = 0
        for index, text in enumerate(cidrs):
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f"[{index}] {text!r} is not an IP address or CIDR") from None
            if isinstance(network, ipaddress.IPv6Network):
                mapped = network.network_address.ipv4_mapped
                if mapped is not None and network.prefixlen >= 96:
                    network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
            shift = network.max_prefixlen - network.prefixlen
            tables[network.version].setdefault(network.prefixlen, set()).add(
                int(network.network_address) >> shift
            )
            count += 1
        return cls(_family(32, tables[4]), _family(128, tables[6]), count)

    def match(self, ip: str) -> str | None:
        """The network (as CIDR text) containing ``ip``, or None (also for a non-address)."""
        parsed = address_to_int(ip)
        if parsed is None:
            return None
        version, value = parsed
        family = self._v4 if version == 4 else self._v6
        found = family.match(value)
        if found is None:
            return None
        prefix, network = found
        address = ipaddress.IPv4Address(network) if version == 4 else ipaddress.IPv6Address(network)
        return f"{address}/{prefix}"

    def __contains__(self, ip: str) -> bool:
        return self.contains(address_to_int(ip))

    def contains(self, parsed: tuple[int, int] | None) -> bool:
        """Membership of an address already parsed by ``address_to_int`` (parse once,
        test several tables)."""
        if parsed is None:
            return False
        version, value = parsed
        return (self._v4 if version == 4 else self._v6).match(value) is not None

    def __bool__(self) -> bool:
        return self.size > 0


def _family(bits: int, table: dict[int, set[int]]) -> _Family:
    levels = tuple(
        (prefix, bits - prefix, frozenset(table[prefix])) for prefix in sorted(table, reverse=True)
    )
    return _Family(bits, levels)


def address_to_int(ip: str) -> tuple[int, int] | None:
    """(4 or 6, integer value) of an address string; IPv4-mapped IPv6 counts as IPv4.

    ``inet_pton`` is the cheapest strict parser in the standard library (a C call),
    several times faster than ``ipaddress.ip_address``.
    """
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    except (OSError, ValueError):
        return None
    if value & _V4_MAPPED_MASK == _V4_MAPPED:
        return 4, value & 0xFFFFFFFF
    return 6, value
