"""manifests/examples: every AbusePolicy passes the product's own model and the checked-in
CRD (through the fake API server, which prunes, defaults and validates like the real one);
the annotated Service and the API-key Secret are valid Kubernetes objects in the shapes the
contract binds on (CONTRACT.md section 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs published
import pytest
import yaml
from conftest import ROOT
from k8s_apiserver import KubeApiServer, load_crd
from kubernetes import client

from sidecar.model.policy import AbusePolicy

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
CRD = ROOT / "charts" / "abuse-sidecar" / "crds" / "abusepolicies.yaml"
GROUP, VERSION, PLURAL = "abuse.sidecar.dev", "v1alpha1", "abusepolicies"


def _documents(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{index}", doc)
        for path in EXAMPLES
        for index, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if isinstance(doc, dict) and doc.get("kind") == kind
    ]


POLICIES = _documents("AbusePolicy")


def _contains(stored: Any, written: Any) -> bool:
    """Everything the example wrote is still there (defaults may add more)."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(
            k in stored and _contains(stored[k], v) for k, v in written.items()
        )
    if isinstance(written, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(written)
            and all(map(_contains, stored, written))
        )
    return bool(stored == written)


def test_there_is_an_example_per_seed_scenario() -> None:
    names = {doc["metadata"]["name"] for _, doc in POLICIES}
    assert {
        "review-spam",
        "brute-force",
        "credential-stuffing",
        "scraping",
        "graphql",
        "tor-vpn-login",
    } <= names
    by_name = {doc["metadata"]["name"]: doc for _, doc in POLICIES}
    for name in ("brute-force", "credential-stuffing"):
        codes = [c.get("responseCodes") for c in by_name[name]["spec"]["cohorts"]]
        assert any(c and 401 in c for c in codes), f"{name} counts failed logins (401) in a cohort"


def test_no_two_examples_bind_the_same_host() -> None:
    """Applied together, the examples must not compete for a host (the binding would depend
    on which policy the sidecar saw first)."""
    seen: dict[str, str] = {}
    for where, doc in POLICIES:
        for host in doc["spec"].get("hosts", []):
            assert host not in seen, f"{host} is in {seen.get(host)} and {where}"
            seen[host] = where


@pytest.mark.parametrize(("where", "doc"), POLICIES, ids=[w for w, _ in POLICIES])
def test_example_policy_passes_the_model(where: str, doc: dict[str, Any]) -> None:
    policy = AbusePolicy.model_validate(doc)
    assert policy.metadata.namespace == "shop", where


@pytest.mark.skipif(
    not CRD.is_file(), reason="charts/abuse-sidecar/crds/abusepolicies.yaml not generated yet"
)
def test_example_policies_are_accepted_by_the_crd_without_pruning() -> None:
    with KubeApiServer(load_crd(CRD)) as server:
        api: Any = client.CustomObjectsApi(server.api_client())
        for where, doc in POLICIES:
            try:
                stored = api.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, doc)
            except client.ApiException as error:
                pytest.fail(f"{where}: the CRD rejects it: {error.body}")
            assert _contains(stored["spec"], doc["spec"]), f"{where}: the CRD pruned fields"


@pytest.mark.skipif(
    not CRD.is_file(), reason="charts/abuse-sidecar/crds/abusepolicies.yaml not generated yet"
)
def test_the_crd_check_does_reject_a_bad_policy() -> None:
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AbusePolicy",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {
            "mode": "block-everything",
            "rateLimits": [{"name": "x", "limit": 0, "period": "1 minute"}],
        },
    }
    with KubeApiServer(load_crd(CRD)) as server:
        api: Any = client.CustomObjectsApi(server.api_client())
        with pytest.raises(client.ApiException) as rejected:
            api.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, bad)
    assert rejected.value.status == 422
    body = yaml.safe_load(str(rejected.value.body))
    fields = {cause["field"] for cause in body["details"]["causes"]}
    assert {"spec.mode", "spec.rateLimits[0].limit", "spec.rateLimits[0].period"} <= fields


def test_annotated_service_binds_a_policy_of_its_namespace() -> None:
    services = _documents("Service")
    assert services
    policies = {(doc["metadata"]["namespace"], doc["metadata"]["name"]) for _, doc in POLICIES}
    for where, service in services:
        name = service["metadata"]["annotations"]["abuse.sidecar.dev/policy"]
        assert (service["metadata"]["namespace"], name) in policies, where


def test_api_key_secret_has_the_contract_shape() -> None:
    secrets = _documents("Secret")
    assert secrets
    selectors = [
        doc["spec"]["identity"]["apiKey"]["secretSelector"]["matchLabels"]
        for _, doc in POLICIES
        if (doc["spec"].get("identity") or {}).get("apiKey", {}).get("secretSelector")
    ]
    for where, secret in secrets:
        labels = secret["metadata"]["labels"]
        assert labels["abuse.sidecar.dev/api-key"] == "true", where
        assert "api_key" in {**secret.get("data", {}), **secret.get("stringData", {})}, where
        assert {"abuse.sidecar.dev/subject", "abuse.sidecar.dev/plan"} <= set(
            secret["metadata"]["annotations"]
        )
        assert any(all(labels.get(k) == v for k, v in s.items()) for s in selectors), where


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_builtin_examples_are_valid_kubernetes_objects(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc["kind"] != "AbusePolicy":
            kubernetes_validate.validate(doc, "1.35.0", strict=True)
