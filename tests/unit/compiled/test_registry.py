"""A broken policy keeps its last good version serving and is reported."""

from __future__ import annotations

from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text

GOOD = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: shop, namespace: demo}
spec: {hosts: [api.example.com], honeypots: {paths: [/.env]}}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: other, namespace: demo}
spec: {hosts: [other.example.com]}
"""
BROKEN_FIRST = GOOD.replace("paths: [/.env]", "paths: [.env]")


def test_invalid_update_keeps_last_good_version_and_others() -> None:
    registry = PolicyRegistry(Resources())
    registry.replace_source("f", load_text(GOOD, "p.yaml"))
    first = registry.current
    good = first.index.by_id["demo/shop"]
    registry.replace_source("f", load_text(BROKEN_FIRST, "p.yaml"))
    snapshot = registry.current
    assert snapshot.version == first.version + 1
    assert snapshot.index.by_id["demo/shop"] is good
    assert "demo/other" in snapshot.index.by_id
    states = {s.id: s for s in snapshot.states}
    assert states["demo/shop"].state == "invalid"
    assert states["demo/shop"].error is not None
    assert "spec.honeypots.paths[0]" in states["demo/shop"].error
    assert states["demo/other"].state == "ready"


def test_unparseable_file_keeps_every_policy_it_had() -> None:
    registry = PolicyRegistry(Resources())
    registry.replace_source("f", load_text(GOOD, "p.yaml"))
    registry.replace_source("f", load_text("spec: [unclosed", "p.yaml"))
    snapshot = registry.current
    assert set(snapshot.index.by_id) == {"demo/shop", "demo/other"}
    assert "f" in snapshot.source_errors


def test_policy_removed_from_file_is_dropped() -> None:
    registry = PolicyRegistry(Resources())
    registry.replace_source("f", load_text(GOOD, "p.yaml"))
    registry.replace_source("f", load_text(GOOD.split("---", maxsplit=1)[0], "p.yaml"))
    assert set(registry.current.index.by_id) == {"demo/shop"}


def test_same_policy_in_two_files_is_an_error_not_a_silent_override() -> None:
    registry = PolicyRegistry(Resources())
    registry.replace_source("a", load_text(GOOD, "a.yaml"))
    registry.replace_source("b", load_text(GOOD.split("---", maxsplit=1)[0], "b.yaml"))
    snapshot = registry.current
    assert snapshot.index.by_id["demo/shop"].source == "a.yaml"
    assert any(s.error and "more than once" in s.error for s in snapshot.states)


def test_listeners_see_every_new_snapshot() -> None:
    seen: list[int] = []
    registry = PolicyRegistry(Resources())
    registry.subscribe(lambda snap: seen.append(snap.version))
    registry.replace_source("f", load_text(GOOD, "p.yaml"))
    registry.remove_source("f")
    assert seen == [1, 2]
    assert registry.current.loaded == 0
