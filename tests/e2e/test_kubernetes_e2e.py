"""``abuse-sidecar serve --kubernetes`` behind real Envoy, fed by the in-test API server.

The sidecar process reads ``KUBECONFIG`` (pointing at ``KubeApiServer``) the way it would in a
developer's shell; in a pod it would use its service account. Everything it serves comes from
the cluster: the AbusePolicy, the Service annotation that binds the Service's DNS names to it,
and the API key in a labelled Secret.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.stack import Stack
from tests.k8s_apiserver import KubeApiServer, load_crd

pytestmark = pytest.mark.e2e

CRD = (
    Path(__file__).resolve().parents[2] / "charts" / "abuse-sidecar" / "crds" / "abusepolicies.yaml"
)
Json = dict[str, Any]
SERVICE_NAMES = ["reviews", "reviews.shop", "reviews.shop.svc", "reviews.shop.svc.cluster.local"]


def reviews_policy(**spec: Any) -> Json:
    return {
        "apiVersion": "abuse.sidecar.dev/v1alpha1",
        "kind": "AbusePolicy",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {
            # No spec.hosts: the Service annotation is the only binding.
            "identity": {
                "required": True,
                "apiKey": {
                    "in": "header",
                    "name": "x-api-key",
                    "secretSelector": {"matchLabels": {"abuse.sidecar.dev/api-key": "true"}},
                },
            },
            "honeypots": {"paths": ["/.env", "/wp-login.php"], "blockFor": "1h"},
            **spec,
        },
    }


def reviews_service(annotated: bool = True) -> Json:
    annotations = {"abuse.sidecar.dev/policy": "reviews"} if annotated else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "shop", "annotations": annotations},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 8080}]},
    }


def key_secret(key: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "alice-key",
            "namespace": "shop",
            "labels": {"abuse.sidecar.dev/api-key": "true"},
            "annotations": {"abuse.sidecar.dev/subject": "alice", "abuse.sidecar.dev/plan": "gold"},
        },
        "stringData": {"api_key": key},
    }


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ready(api: KubeApiServer) -> Json | None:
    obj = api.get("abusepolicies", "shop", "reviews") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), None)


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(load_crd(CRD), bookmark_lead=1.0) as server:
        yield server
        assert not server.internal_errors


def test_policy_service_and_secret_from_the_cluster_decide_through_envoy(
    api: KubeApiServer, stack: Stack, tmp_path: Path
) -> None:
    key = secrets.token_urlsafe(24)
    api.create(reviews_policy())
    api.create(reviews_service())
    api.create(key_secret(key))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="shop")

    sidecar = stack.sidecar(
        extra_args=["--kubernetes", "--namespace", "shop"],
        env={"KUBECONFIG": str(kubeconfig), "POD_NAME": "abuse-sidecar-0", "POD_NAMESPACE": "shop"},
    )
    app = stack.upstream()
    envoy = stack.envoy(sidecar, app)

    def get(path: str, host: str = SERVICE_NAMES[-1], **headers: str) -> httpx.Response:
        return httpx.get(envoy.url(path), headers={"host": host, **headers}, timeout=10)

    # Ready only after the first list of every kind: the harness waited on /readyz.
    status, body = sidecar.admin_get("/readyz")
    assert status == 200, body

    # Every DNS name of the annotated Service is bound to shop/reviews; the key is Alice's.
    for host in SERVICE_NAMES:
        allowed = get("/reviews/1", host=host, **{"x-api-key": key})
        assert allowed.status_code == 200, (host, allowed.text)
        seen = allowed.json()["headers"]
        assert seen["x-abuse-policy"] == "shop/reviews"
        assert (seen["x-abuse-subject"], seen["x-abuse-plan"]) == ("alice", "gold")
    unbound = get("/reviews/1", host="ratings.shop.svc.cluster.local")
    assert unbound.json()["headers"]["x-abuse-policy"] == "none"

    missing = get("/reviews/1")
    assert missing.status_code == 401
    assert missing.headers["x-abuse-reason"] == "missing_credentials"
    wrong = get("/reviews/1", **{"x-api-key": secrets.token_urlsafe(24)})
    assert wrong.status_code == 401
    assert wrong.headers["x-abuse-reason"] == "invalid_credentials"

    # The leader wrote status; /policies shows the policy, its source and the binding.
    condition = eventually(lambda: ready(api), what="Ready condition")
    assert (condition["status"], condition["reason"], condition["observedGeneration"]) == (
        "True",
        "Compiled",
        1,
    )
    status, body = sidecar.admin_get("/policies")
    view = json.loads(body)
    (state,) = view["policies"]
    assert (state["id"], state["source"], state["state"]) == (
        "shop/reviews",
        "kubernetes:shop/reviews",
        "ready",
    )
    kube = view["kubernetes"]
    assert kube["serviceBindings"] == {"shop/reviews": "shop/reviews"}
    assert kube["apiKeySecrets"] == 1
    assert kube["status"]["leader"] is True
    assert kube["status"]["identity"] == "abuse-sidecar-0"
    assert key not in body

    # Rotating the Secret swaps the accepted key without a restart.
    rotated = secrets.token_urlsafe(24)
    secret = api.get("secrets", "shop", "alice-key")
    assert secret is not None
    api.update({**secret, "data": {}, "stringData": {"api_key": rotated}})
    eventually(
        lambda: get("/reviews/2", **{"x-api-key": rotated}).status_code == 200, what="new key"
    )
    assert get("/reviews/2", **{"x-api-key": key}).status_code == 401

    # An invalid update keeps generation 1 serving and says why on the object.
    api.update(reviews_policy(mode="block-everything"), validate=False)
    condition = eventually(
        lambda: (c := ready(api)) and c["reason"] == "Invalid" and c, what="Ready=False"
    )
    assert condition["message"].startswith("spec.mode: ")
    assert condition["observedGeneration"] == 2
    assert get("/reviews/3", **{"x-api-key": rotated}).status_code == 200

    # Removing the annotation unbinds the Service; putting it back binds it again.
    api.update(reviews_service(annotated=False))
    eventually(
        lambda: get("/reviews/4").json()["headers"].get("x-abuse-policy") == "none",
        what="unbound",
    )
    api.update(reviews_service(annotated=True))
    eventually(lambda: get("/reviews/5").status_code == 401, what="bound again")

    # The honeypot denies and then blocks the client on this policy.
    trap = get("/.env", **{"x-api-key": rotated})
    assert trap.status_code == 403
    assert trap.headers["x-abuse-reason"] == "honeypot"
    problem = trap.json()
    assert (problem["policy"], problem["rule"]) == ("shop/reviews", "honeypots")
    blocked = get("/reviews/6", **{"x-api-key": rotated})
    assert blocked.status_code == 403
    assert blocked.headers["x-abuse-reason"] == "honeypot"
    assert app.requests_to("/.env") == []

    denials = {
        (labels["policy"], labels["reason"]): float(value)
        for labels, value in _samples(sidecar.metrics(), "abuse_sidecar_decisions_total")
        if labels["decision"] == "deny"
    }
    assert denials[("shop/reviews", "honeypot")] == 2
    assert denials[("shop/reviews", "invalid_credentials")] >= 2
    policies = {
        labels["state"]: float(value)
        for labels, value in _samples(sidecar.metrics(), "abuse_sidecar_policies")
    }
    assert policies == {"ready": 0, "invalid": 1}  # invalid: serving its last good version


def _samples(text: str, name: str) -> list[tuple[dict[str, str], str]]:
    pattern = re.compile(rf"^{name}\{{([^}}]*)\}} (\S+)$", re.MULTILINE)
    return [
        (dict(re.findall(r'(\w+)="([^"]*)"', labels)), value)
        for labels, value in pattern.findall(text)
    ]


def test_every_worker_watches_and_only_the_supervisor_writes_status(
    api: KubeApiServer, stack: Stack, tmp_path: Path
) -> None:
    key = secrets.token_urlsafe(24)
    api.create(reviews_policy())
    api.create(reviews_service())
    api.create(key_secret(key))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="shop")
    sidecar = stack.sidecar(
        workers=2,
        extra_args=["--kubernetes", "--namespace", "shop"],
        env={"KUBECONFIG": str(kubeconfig), "POD_NAME": "abuse-sidecar-0", "POD_NAMESPACE": "shop"},
    )
    envoy = stack.envoy(sidecar, stack.upstream(), concurrency=2)
    # Each Envoy worker talks to each sidecar worker: every answer comes from a process
    # that bound the Service and knows the Secret's key.
    for index in range(12):
        response = httpx.get(
            envoy.url(f"/reviews/{index}"),
            headers={"host": "reviews.shop", "x-api-key": key},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["headers"]["x-abuse-subject"] == "alice"
    eventually(lambda: ready(api), what="Ready condition")
    time.sleep(1.0)  # room for a second writer, if there were one
    patches = [r for r in api.requests_to("abusepolicies", "PATCH") if r.path.endswith("/status")]
    assert len(patches) == 1
    # One Lease candidate (the supervisor), three watchers (the supervisor and both workers).
    lease = api.get("leases", "shop", "abuse-sidecar-status-8d9001d32c")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "abuse-sidecar-0"
    assert len([r for r in api.requests_to("leases") if r.method == "POST"]) == 1
    assert len([r for r in api.requests_to("abusepolicies", "GET") if not r.watch]) == 3
