"""Key dimensions (``by:``) of rate limits, budgets and cohorts, compiled once.

A compiled key turns a request into the string that identifies "who" is being
counted, or None when a dimension has no value (an anonymous caller under
``by: [subject]``): such a request is not counted against that rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.pipeline.context import RequestContext

Extractor = Callable[[RequestContext], str | None]


def _ip(ctx: RequestContext) -> str | None:
    return ctx.client_ip or None


def _subject(ctx: RequestContext) -> str | None:
    return ctx.subject


def _api_key(ctx: RequestContext) -> str | None:
    return ctx.api_key_id


def _plan(ctx: RequestContext) -> str | None:
    return ctx.plan


def _method(ctx: RequestContext) -> str | None:
    return ctx.method


def _path(ctx: RequestContext) -> str | None:
    return ctx.path


def _header(name: str) -> Extractor:
    lowered = name.lower()

    def extract(ctx: RequestContext) -> str | None:
        value = ctx.headers.get(lowered)
        return value if value else None

    return extract


def _ip_prefix(bits: int) -> Extractor:
    # IPv4 addresses are cut at min(bits, 32): "ip_prefix:64" groups IPv6 /64s
    # while still keying IPv4 clients by their whole address.
    def extract(ctx: RequestContext) -> str | None:
        if not ctx.client_ip:
            return None
        try:
            address = ipaddress.ip_address(ctx.client_ip)
        except ValueError:
            return None
        width = min(bits, address.max_prefixlen)
        network = ipaddress.ip_network(f"{address}/{width}", strict=False)
        return str(network)

    return extract


_SIMPLE: dict[str, Extractor] = {
    "ip": _ip,
    "subject": _subject,
    "api_key": _api_key,
    "plan": _plan,
    "method": _method,
    "path": _path,
}


def extractor(dimension: str) -> Extractor:
    if dimension in _SIMPLE:
        return _SIMPLE[dimension]
    kind, _, arg = dimension.partition(":")
    if kind == "header":
        return _header(arg)
    if kind == "ip_prefix":
        return _ip_prefix(int(arg))
    raise ValueError(f"unknown key dimension {dimension!r}")


@dataclass(frozen=True, slots=True)
class CompiledKey:
    dimensions: tuple[str, ...]
    extractors: tuple[Extractor, ...]

    @classmethod
    def compile(cls, dimensions: Sequence[str]) -> CompiledKey:
        return cls(tuple(dimensions), tuple(extractor(d) for d in dimensions))

    def value(self, ctx: RequestContext) -> str | None:
        """``ip=1.2.3.4|subject=alice``-style key, or None if any dimension is missing."""
        if len(self.extractors) == 1:  # the common case (by: [ip]), on every Check
            single = self.extractors[0](ctx)
            return None if single is None else f"{self.dimensions[0]}={single}"
        parts: list[str] = []
        for dimension, extract in zip(self.dimensions, self.extractors, strict=True):
            value = extract(ctx)
            if value is None:
                return None
            parts.append(f"{dimension}={value}")
        return "|".join(parts)
