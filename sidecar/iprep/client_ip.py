"""Which address a request comes from (CONTRACT.md section 4, "Client IP").

``xffTrustedHops: 0`` uses the connection's source address, the only value a client
cannot forge. ``xffTrustedHops: n`` uses the n-th X-Forwarded-For entry counted from
the right: the entry written by the outermost of the n proxies we trust. Entries to
its left were written by the client and are never used; when the n-th entry is
missing (fewer than n entries) or is not an address, the source address is used.

Entry forms accepted (surrounding spaces ignored; Envoy joins repeated headers
with ``,``, so every header's entries count):

- ``192.0.2.1``, ``2001:db8::1`` (canonical or not; the result is canonical);
- ``192.0.2.1:8080``, ``[2001:db8::1]``, ``[2001:db8::1]:443`` (port 0-65535 dropped);
- ``::ffff:192.0.2.1`` becomes ``192.0.2.1``: a dual-stack listener reports IPv4
  clients that way, and IPv4 rules, keys and databases must see one form.

Not addresses (so the source address is used): empty entries, ``unknown``,
obfuscated identifiers of RFC 7239, IPv4 with leading zeros (``010.0.0.1``, which
some parsers read as octal), IPv6 zone identifiers (``fe80::1%eth0``: meaningless off
the proxy's own link), a bare IPv6 followed by a port (ambiguous), brackets around
IPv4, and ports outside 0-65535.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ["canonical_ip", "client_ip", "parse_forwarded_entry"]

_MAX_ENTRY_LENGTH = 64  # "[" + longest IPv6 text (45) + "]:65535" fits with room to spare


def client_ip(source_ip: str, xff_header: str | None, trusted_hops: int) -> str:
    """The client address for a request, canonical (``::ffff:a.b.c.d`` as ``a.b.c.d``).

    ``source_ip`` is the CheckRequest's source address; when it is not an IP address
    (a Unix socket peer) it is returned unchanged.
    """
    if trusted_hops > 0 and xff_header:
        # Split only the n right-most entries off: the rest of a long header is
        # client-written and never inspected.
        entries = xff_header.rsplit(",", trusted_hops)
        if len(entries) >= trusted_hops:
            forwarded = parse_forwarded_entry(entries[-trusted_hops])
            if forwarded is not None:
                return forwarded
    return canonical_ip(source_ip) or source_ip


@lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """``text`` as a canonical address string, or None when it is not a plain address.

    Cached: a handful of proxies and hot clients make up most requests.
    """
    if not text or len(text) > _MAX_ENTRY_LENGTH or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_forwarded_entry(entry: str) -> str | None:
    """One X-Forwarded-For entry as a canonical address, or None (see module docstring)."""
    text = entry.strip()
    if not text or len(text) > _MAX_ENTRY_LENGTH:
        return None
    if text[0] == "[":
        close = text.find("]")
        if close < 0 or not _is_port_suffix(text[close + 1 :]):
            return None
        host = text[1:close]
        if ":" not in host:  # brackets are for IPv6 only (RFC 3986 IP-literal)
            return None
        return canonical_ip(host)
    if text.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        host, _, port = text.partition(":")
        if not _is_port_suffix(":" + port) or "." not in host:
            return None
        return canonical_ip(host)
    return canonical_ip(text)


def _is_port_suffix(text: str) -> bool:
    if not text:
        return True
    if text[0] != ":":
        return False
    port = text[1:]
    return 0 < len(port) <= 5 and port.isascii() and port.isdigit() and int(port) <= 65535
