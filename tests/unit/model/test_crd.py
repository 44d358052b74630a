"""The CRD is generated from the model; the checked-in copies must equal it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.model.crd import crd, crd_yaml

ROOT = Path(__file__).parents[3]
CHECKED_IN = [ROOT / "charts/abuse-sidecar/crds/abusepolicies.yaml", ROOT / "manifests/crd.yaml"]


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_in_crd_is_current(path: Path) -> None:
    assert path.read_text() == crd_yaml(), (
        f"regenerate with: abuse-sidecar crd > {path.relative_to(ROOT)}"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return out


def test_schema_is_structural() -> None:
    version = crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text
    assert "anyOf" not in text
    assert "oneOf" not in text
    for path, node in _walk(schema):
        if path == ".metadata":
            continue  # the API server owns ObjectMeta's schema
        assert "type" in node, f"{path} has no type"
        if node["type"] == "object":
            has_shape = "properties" in node or "additionalProperties" in node
            assert has_shape or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_schema_carries_enums_durations_required_status_and_columns() -> None:
    version = crd()["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["mode"]["enum"] == ["enforce", "shadow"]
    assert spec["failureMode"]["enum"] == ["open", "closed"]
    limit = spec["rateLimits"]["items"]
    assert set(limit["required"]) == {"name", "limit", "period"}
    assert limit["properties"]["period"]["pattern"] == "^[1-9][0-9]{0,8}(s|m|h|d)$"
    assert limit["properties"]["algorithm"]["enum"] == [
        "sliding_window",
        "token_bucket",
        "fixed_window",
    ]
    assert spec["identity"]["properties"]["jwt"]["required"] == ["issuer"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Mode", "Ready", "Age"]
