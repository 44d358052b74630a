"""The chart's RBAC, loaded into the fake API server's RBAC authorizer, against the calls the
watcher, the status writer and the leader election make with the official client: every
call the product needs is allowed, and what it must never do (write a spec, read Secrets
outside its namespaces, delete the Lease) is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NAMESPACE, RELEASE, ROOT, Render
from k8s_apiserver import KubeApiServer, load_crd
from kubernetes import client
from shared_data import shared_testdata

CRD = ROOT / "charts" / "abuse-sidecar" / "crds" / "abusepolicies.yaml"
FALLBACK_CRD = shared_testdata("k8s") / "crd.yaml"
GROUP, VERSION, PLURAL = "abuse.sidecar.dev", "v1alpha1", "abusepolicies"
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def _crd() -> dict[str, Any]:
    for path in (CRD, FALLBACK_CRD):
        if path.is_file():
            return load_crd(path)
    pytest.skip("no AbusePolicy CRD to serve")


def _policy(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AbusePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": [f"{name}.example.com"], "mode": "enforce"},
    }


class Cluster:
    def __init__(self, server: KubeApiServer) -> None:
        self.server = server
        token = server.service_account_token(NAMESPACE, RELEASE)
        api_client = server.api_client(token)
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.leases: Any = client.CoordinationV1Api(api_client)

    def allowed(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        return call(*args, **kwargs)

    def refused(self, call: Any, *args: Any, **kwargs: Any) -> str:
        with pytest.raises(client.ApiException) as refused:
            call(*args, **kwargs)
        assert refused.value.status == 403, refused.value.body
        return str(refused.value.body)


@pytest.fixture(params=[["shop"], []], ids=["namespaced", "all-namespaces"])
def cluster(request: pytest.FixtureRequest, render: Render) -> Iterator[Cluster]:
    docs = render(watchNamespaces=request.param)
    with KubeApiServer(
        _crd(), rbac=True, namespaces=("default", "shop", "payments", NAMESPACE)
    ) as server:
        for doc in docs:
            if doc["kind"] in RBAC_KINDS:
                server.create(doc)
        for namespace in ("shop", "payments"):
            server.create(_policy("p1", namespace))
            server.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "key", "namespace": namespace},
                }
            )
        yield Cluster(server)


def test_the_watcher_can_list_and_watch_what_it_needs(cluster: Cluster) -> None:
    c = cluster
    selector = "abuse.sidecar.dev/api-key=true"
    c.allowed(c.custom.list_namespaced_custom_object, GROUP, VERSION, "shop", PLURAL)
    c.allowed(
        c.custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        watch=True,
        timeout_seconds=1,
    )
    c.allowed(c.core.list_namespaced_service, "shop", watch=False)
    c.allowed(c.core.list_namespaced_secret, "shop", label_selector=selector)
    c.allowed(
        c.custom.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        "p1",
        {"status": {"observedGeneration": 1}},
    )


def test_the_watcher_can_never_write_a_spec_or_a_secret(cluster: Cluster) -> None:
    c = cluster
    message = c.refused(
        c.custom.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        "p1",
        {"spec": {"mode": "shadow"}},
    )
    assert 'cannot patch resource \\"abusepolicies\\"' in message
    c.refused(c.custom.delete_namespaced_custom_object, GROUP, VERSION, "shop", PLURAL, "p1")
    c.refused(c.core.create_namespaced_secret, "shop", {"metadata": {"name": "stolen"}})
    c.refused(c.core.delete_namespaced_service, "kubernetes", "default")


def test_the_leader_election_lease_lives_only_in_the_release_namespace(cluster: Cluster) -> None:
    c = cluster
    lease = {
        "metadata": {"name": "abuse-sidecar-leader"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15},
    }
    created = c.allowed(c.leases.create_namespaced_lease, NAMESPACE, lease)
    read = c.allowed(c.leases.read_namespaced_lease, "abuse-sidecar-leader", NAMESPACE)
    assert read.metadata.resource_version == created.metadata.resource_version
    read.spec.holder_identity = "pod-b"
    c.allowed(c.leases.replace_namespaced_lease, "abuse-sidecar-leader", NAMESPACE, read)
    c.refused(c.leases.delete_namespaced_lease, "abuse-sidecar-leader", NAMESPACE)
    c.refused(c.leases.create_namespaced_lease, "shop", lease)


def test_namespaced_install_reads_nothing_outside_its_namespaces(render: Render) -> None:
    docs = render(watchNamespaces=["shop"])
    with KubeApiServer(
        _crd(), rbac=True, namespaces=("default", "shop", "payments", NAMESPACE)
    ) as server:
        for doc in docs:
            if doc["kind"] in RBAC_KINDS:
                server.create(doc)
        c = Cluster(server)
        c.refused(c.custom.list_namespaced_custom_object, GROUP, VERSION, "payments", PLURAL)
        c.refused(c.core.list_namespaced_secret, "payments")
        message = c.refused(c.core.list_secret_for_all_namespaces)
        assert "at the cluster scope" in message
        c.refused(c.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)


def test_cluster_wide_install_reads_every_namespace(render: Render) -> None:
    docs = render(watchNamespaces=[])
    with KubeApiServer(
        _crd(), rbac=True, namespaces=("default", "shop", "payments", NAMESPACE)
    ) as server:
        for doc in docs:
            if doc["kind"] in RBAC_KINDS:
                server.create(doc)
        for namespace in ("shop", "payments"):
            server.create(_policy("p1", namespace))
        c = Cluster(server)
        listed = c.allowed(c.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        assert sorted(i["metadata"]["namespace"] for i in listed["items"]) == ["payments", "shop"]
        c.allowed(
            c.core.list_secret_for_all_namespaces, label_selector="abuse.sidecar.dev/api-key=true"
        )
        c.allowed(c.core.list_service_for_all_namespaces)
