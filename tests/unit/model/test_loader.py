"""Invalid policies name the file, the document and the field (tests/policies/invalid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.model.loader import load_file, load_text

INVALID = sorted((Path(__file__).parents[2] / "policies" / "invalid").glob("*.yaml"))
VALID = sorted((Path(__file__).parents[2] / "policies" / "valid").glob("*.yaml"))


def _expected_path(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_policy_names_file_document_and_field(path: Path) -> None:
    (doc,) = load_file(path)
    assert doc.policy is None
    assert doc.error is not None
    assert doc.error.source == str(path)
    assert doc.error.doc_index == 0
    assert doc.error.field_path == _expected_path(path)
    assert str(doc.error).startswith(f"{path} (document 0): {_expected_path(path)}: ")
    # A failed document still tells which policy it meant, so its last good
    # version can keep serving.
    assert doc.policy_id == "demo/shop"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_policies_load(path: Path) -> None:
    docs = load_file(path)
    assert all(d.error is None for d in docs), [str(d.error) for d in docs]


def test_document_index_counts_every_yaml_document() -> None:
    text = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: a}
spec: {}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: b}
spec:
  rateLimits: [{name: x, limit: 1, period: 1m}, {name: y, limit: 0, period: 1m}, {name: z, limit: 1, period: 1m}]
"""
    first, second = load_text(text, "policies.yaml")
    assert first.error is None
    assert first.policy is not None
    assert first.policy.id == "default/a"
    assert second.error is not None
    assert str(second.error).startswith("policies.yaml (document 1): spec.rateLimits[1].limit: ")


def test_yaml_syntax_error_reports_line() -> None:
    (doc,) = load_text("spec: [unclosed\n", "broken.yaml")
    assert doc.error is not None
    assert "broken.yaml" in str(doc.error)
    assert "line" in str(doc.error)


def test_non_mapping_document() -> None:
    (doc,) = load_text("- just\n- a list\n", "list.yaml")
    assert doc.error is not None
    assert "not a mapping" in str(doc.error)


def test_defaults_follow_the_contract() -> None:
    (doc,) = load_text(
        "apiVersion: abuse.sidecar.dev/v1alpha1\nkind: AbusePolicy\nmetadata: {name: a}\n"
        "spec: {graphql: {}, rateLimits: [{name: r, limit: 1, period: 1s}]}\n",
        "d.yaml",
    )
    assert doc.policy is not None
    spec = doc.policy.spec
    assert spec.mode == "enforce"
    assert spec.failure_mode == "open"
    assert spec.client_ip.xff_trusted_hops == 0
    assert spec.rate_limits[0].algorithm == "sliding_window"
    assert spec.rate_limits[0].by == ["ip"]
    assert spec.graphql is not None
    assert spec.graphql.paths == ["/graphql"]
    assert spec.graphql.max_cost == 1000
    assert spec.graphql.introspection == "allow"
