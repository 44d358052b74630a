"""Binding a request to a policy in the contract's order (section 3)."""

from __future__ import annotations

from sidecar.compiled.hosts import BindingIndex, normalize_host
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text

POLICIES = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: exact, namespace: shop}
spec: {hosts: [api.example.com, "API.Example.NET:8443"]}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: wild, namespace: shop}
spec: {hosts: ["*.example.com"]}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: deeper, namespace: shop}
spec: {hosts: ["*.eu.example.com"]}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: fallback, namespace: ops}
spec: {}
"""


def _index(default: str | None = None, services: dict[str, str] | None = None) -> BindingIndex:
    registry = PolicyRegistry(Resources(), default)
    registry.replace_source("test", load_text(POLICIES, "test.yaml"), publish=False)
    if services:
        registry.set_service_hosts(services, publish=False)
    return registry.publish().index


def _bound(index: BindingIndex, authority: str, ext: dict[str, str] | None = None) -> str | None:
    policy = index.bind(normalize_host(authority), ext or {})
    return policy.id if policy else None


def test_host_normalisation() -> None:
    assert normalize_host("API.Example.com:443") == "api.example.com"
    assert normalize_host("api.example.com.") == "api.example.com"
    assert normalize_host("[2001:db8::1]:8080") == "[2001:db8::1]"
    assert normalize_host("") == ""


def test_exact_host_ignores_case_port_and_trailing_dot() -> None:
    index = _index()
    assert _bound(index, "api.example.com") == "shop/exact"
    assert _bound(index, "API.EXAMPLE.COM:8080") == "shop/exact"
    assert _bound(index, "api.example.com.") == "shop/exact"
    assert _bound(index, "api.example.net") == "shop/exact"


def test_context_extension_wins_over_hosts() -> None:
    index = _index()
    assert _bound(index, "api.example.com", {"abuse-policy": "ops/fallback"}) == "ops/fallback"


def test_unknown_context_extension_falls_through_to_hosts() -> None:
    assert _bound(_index(), "api.example.com", {"abuse-policy": "ops/missing"}) == "shop/exact"


def test_wildcards_longest_suffix_first_and_not_the_apex() -> None:
    index = _index()
    assert _bound(index, "www.example.com") == "shop/wild"
    assert _bound(index, "a.b.example.com") == "shop/wild"
    assert _bound(index, "x.eu.example.com") == "shop/deeper"
    assert _bound(index, "example.com") is None


def test_service_names_come_after_exact_and_before_wildcards() -> None:
    services = {
        "reviews.shop.svc.cluster.local": "ops/fallback",
        "api.example.com": "ops/fallback",
        "www.example.com": "ops/fallback",
    }
    index = _index(services=services)
    assert _bound(index, "reviews.shop.svc.cluster.local") == "ops/fallback"
    assert _bound(index, "api.example.com") == "shop/exact"
    assert _bound(index, "www.example.com") == "ops/fallback"


def test_default_policy_last_and_none_without_it() -> None:
    assert _bound(_index(default="ops/fallback"), "other.org") == "ops/fallback"
    assert _bound(_index(), "other.org") is None


def test_conflicting_hosts_are_reported_and_resolved_deterministically() -> None:
    text = (
        POLICIES
        + """
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: again, namespace: aaa}
spec: {hosts: [api.example.com]}
"""
    )
    registry = PolicyRegistry(Resources())
    registry.replace_source("t", load_text(text, "t.yaml"))
    index = registry.current.index
    assert [c.host for c in index.conflicts] == ["api.example.com"]
    assert _bound(index, "api.example.com") == "aaa/again"
