"""Binding a request to a policy, in the contract's order (section 3):

1. Envoy ``context_extensions["abuse-policy"] = "ns/name"``
2. an exact ``spec.hosts`` entry
3. a Service annotated ``abuse.sidecar.dev/policy`` whose DNS names match
4. a wildcard ``spec.hosts`` entry (the longest suffix wins)
5. ``--default-policy``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sidecar.compiled.policy import CompiledPolicy

CONTEXT_EXTENSION = "abuse-policy"


def normalize_host(authority: str) -> str:
    """Lower-case, without port or trailing dot; IPv6 literals keep their brackets."""
    host = authority.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(":")
    if colon >= 0 and host[colon + 1 :].isdigit():
        host = host[:colon]
    return host.rstrip(".")


@dataclass(frozen=True, slots=True)
class Conflict:
    host: str
    policies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BindingIndex:
    by_id: Mapping[str, CompiledPolicy]
    exact: Mapping[str, CompiledPolicy]
    services: Mapping[str, CompiledPolicy]
    wildcards: tuple[tuple[str, CompiledPolicy], ...]  # (".example.org", policy), longest first
    default: CompiledPolicy | None
    conflicts: tuple[Conflict, ...]

    @classmethod
    def build(
        cls,
        policies: Iterable[CompiledPolicy],
        service_hosts: Mapping[str, str] | None = None,
        default_policy: str | None = None,
    ) -> BindingIndex:
        ordered = sorted(policies, key=lambda p: p.id)  # deterministic winner on conflicts
        by_id = {p.id: p for p in ordered}
        exact: dict[str, CompiledPolicy] = {}
        wildcard: dict[str, CompiledPolicy] = {}
        claimed: dict[str, list[str]] = {}
        for policy in ordered:
            for raw in policy.hosts:
                host = normalize_host(raw)
                claimed.setdefault(host, []).append(policy.id)
                if host.startswith("*."):
                    wildcard.setdefault(host[1:], policy)
                else:
                    exact.setdefault(host, policy)
        services: dict[str, CompiledPolicy] = {}
        for host, policy_id in (service_hosts or {}).items():
            named = by_id.get(policy_id)
            if named is not None:
                services[normalize_host(host)] = named
        conflicts = tuple(
            Conflict(host, tuple(ids)) for host, ids in sorted(claimed.items()) if len(ids) > 1
        )
        return cls(
            by_id=by_id,
            exact=exact,
            services=services,
            wildcards=tuple(sorted(wildcard.items(), key=lambda item: -len(item[0]))),
            default=by_id.get(default_policy) if default_policy else None,
            conflicts=conflicts,
        )

    def bind(self, host: str, context_extensions: Mapping[str, str]) -> CompiledPolicy | None:
        if context_extensions:
            named = context_extensions.get(CONTEXT_EXTENSION)
            if named:
                policy = self.by_id.get(named)
                if policy is not None:
                    return policy
        exact = self.exact.get(host)
        if exact is not None:
            return exact
        if self.services:
            service = self.services.get(host)
            if service is not None:
                return service
        for suffix, candidate in self.wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return candidate
        return self.default
