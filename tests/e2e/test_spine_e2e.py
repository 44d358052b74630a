"""Issue 2 through real Envoy: honeypots, shadow, binding, reload, bad policies, workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.envoy_config import VirtualHost
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e

SHOP = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: shop, namespace: demo}}
spec:
  hosts: [api.example.test]
  mode: {mode}
  clientIP: {{xffTrustedHops: {hops}}}
  honeypots: {{paths: [/.env, /wp-login.php, /admin/**], blockFor: 1h}}
"""
OTHERS = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: wild, namespace: demo}
spec:
  hosts: ["*.example.test"]
  honeypots: {paths: [/wild-trap]}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: pinned, namespace: ops}
spec:
  honeypots: {paths: [/pinned-trap]}
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: fallback, namespace: ops}
spec:
  honeypots: {paths: [/fallback-trap]}
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def _eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _get(url: str, host: str = "api.example.test", **headers: str) -> httpx.Response:
    return httpx.get(url, headers={"host": host, **headers}, timeout=10)


def test_honeypot_denies_with_problem_json_and_blocks_the_ip(stack: Stack, tmp_path: Path) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=0))
    app = stack.upstream()
    envoy = stack.envoy(stack.sidecar(policies=[tmp_path]), app)

    fine = _get(envoy.url("/products"))
    assert fine.status_code == 200
    seen = fine.json()["headers"]
    assert seen["x-abuse-policy"] == "demo/shop"
    assert seen["x-abuse-risk"] == "0"

    trap = _get(envoy.url("/admin/../.env"))
    assert trap.status_code == 403
    assert trap.headers["x-abuse-reason"] == "honeypot"
    assert trap.headers["content-type"] == "application/problem+json"
    problem = trap.json()
    assert problem["status"] == 403
    assert problem["policy"] == "demo/shop"
    assert problem["rule"] == "honeypots"
    assert problem["type"].endswith("/honeypot")

    after = _get(envoy.url("/products"))
    assert after.status_code == 403
    assert after.headers["x-abuse-reason"] == "honeypot"
    assert app.requests_to("/.env") == []
    assert len(app.requests_to("/products")) == 1


def test_clients_cannot_forge_upstream_headers(stack: Stack, tmp_path: Path) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=0))
    app = stack.upstream()
    envoy = stack.envoy(stack.sidecar(policies=[tmp_path]), app)

    response = _get(
        envoy.url("/products"),
        **{
            "x-abuse-subject": "admin",
            "x-abuse-plan": "gold",
            "x-abuse-risk": "0",
            "x-abuse-policy": "forged",
        },
    )
    seen = response.json()["headers"]
    assert "x-abuse-subject" not in seen
    assert "x-abuse-plan" not in seen
    assert seen["x-abuse-policy"] == "demo/shop"

    unbound = _get(envoy.url("/x"), host="elsewhere.org", **{"x-abuse-subject": "admin"})
    assert unbound.status_code == 200
    assert unbound.json()["headers"]["x-abuse-policy"] == "none"
    assert "x-abuse-subject" not in unbound.json()["headers"]


def test_shadow_mode_never_denies_and_marks_the_request(stack: Stack, tmp_path: Path) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="shadow", hops=0))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path])
    envoy = stack.envoy(sidecar, app)

    trap = _get(envoy.url("/.env"))
    assert trap.status_code == 200
    assert trap.json()["headers"]["x-abuse-shadow"] == "honeypot"
    later = _get(envoy.url("/products"))
    assert later.status_code == 200
    assert later.json()["headers"]["x-abuse-shadow"] == "honeypot"
    metrics = sidecar.metrics()
    assert (
        'abuse_sidecar_decisions_total{decision="allow",policy="demo/shop",reason=""} 2.0'
        in metrics
    )


def test_binding_order_through_envoy(stack: Stack, tmp_path: Path) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=0))
    _write(tmp_path, "others.yaml", OTHERS)
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path], default_policy="ops/fallback")
    envoy = stack.envoy(
        sidecar,
        app,
        virtual_hosts=(
            VirtualHost(
                "pinned",
                domains=("pinned.example.test",),
                context_extensions={"abuse-policy": "ops/pinned"},
            ),
            VirtualHost("default"),
        ),
    )

    def policy_of(host: str) -> str:
        response = _get(envoy.url("/"), host=host)
        assert response.status_code == 200, response.text
        return str(response.json()["headers"]["x-abuse-policy"])

    assert policy_of("api.example.test") == "demo/shop"  # exact host
    assert policy_of("API.Example.Test:8080") == "demo/shop"  # case and port ignored
    assert policy_of("www.example.test") == "demo/wild"  # wildcard
    assert policy_of("pinned.example.test") == "ops/pinned"  # context extension beats everything
    assert policy_of("unrelated.org") == "ops/fallback"  # --default-policy
    assert _get(envoy.url("/fallback-trap"), host="unrelated.org").status_code == 403
    assert _get(envoy.url("/pinned-trap"), host="pinned.example.test").status_code == 403


def test_policy_files_reload_and_a_broken_file_keeps_the_last_good_version(
    stack: Stack, tmp_path: Path
) -> None:
    policy = _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=1))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path])
    envoy = stack.envoy(sidecar, app)

    assert _get(envoy.url("/new-trap"), **{"x-forwarded-for": "198.51.100.1"}).status_code == 200

    policy.write_text(SHOP.format(mode="enforce", hops=1).replace("/.env,", "/.env, /new-trap,"))
    assert _eventually(
        lambda: (
            _get(envoy.url("/new-trap"), **{"x-forwarded-for": "198.51.100.2"}).status_code == 403
        )
    )

    # A broken edit: the last good version keeps serving and the error is reported.
    policy.write_text(SHOP.format(mode="enforce", hops=1).replace("blockFor: 1h", "blockFor: soon"))

    def reported() -> dict[str, Any] | None:
        _status, body = sidecar.admin_get("/policies")
        import json

        states = {p["id"]: p for p in json.loads(body)["policies"]}
        shop = states.get("demo/shop")
        return shop if shop and shop["state"] == "invalid" else None

    shop = _eventually(reported)
    assert shop, "the broken policy is reported in /policies"
    assert "spec.honeypots.blockFor" in shop["lastError"]
    assert str(policy) in shop["lastError"]
    assert _get(envoy.url("/new-trap"), **{"x-forwarded-for": "198.51.100.3"}).status_code == 403
    assert 'abuse_sidecar_policies{state="invalid"} 1.0' in sidecar.metrics()


def test_trusted_xff_hop_is_the_client_and_a_spoofed_entry_is_ignored(
    stack: Stack, tmp_path: Path
) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=1))
    app = stack.upstream()
    envoy = stack.envoy(stack.sidecar(policies=[tmp_path]), app)

    trap = _get(envoy.url("/wp-login.php"), **{"x-forwarded-for": "6.6.6.6, 203.0.113.9"})
    assert trap.status_code == 403
    # The real client (the trusted proxy's entry) is blocked ...
    assert _get(envoy.url("/products"), **{"x-forwarded-for": "203.0.113.9"}).status_code == 403
    # ... the spoofed left-hand entry is not, and neither is Envoy's peer address.
    assert _get(envoy.url("/products"), **{"x-forwarded-for": "6.6.6.6"}).status_code == 200
    assert _get(envoy.url("/products")).status_code == 200


def test_workers_split_envoys_load(stack: Stack, tmp_path: Path) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=0))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path], workers=2)
    envoy = stack.envoy(sidecar, app, concurrency=2)
    envoy.wait_for_healthy_endpoints()

    with httpx.Client(headers={"host": "api.example.test"}, timeout=10) as client:
        for _ in range(60):
            assert client.get(envoy.url("/products")).status_code == 200
    with httpx.Client(headers={"host": "api.example.test"}, timeout=10, http2=False) as client2:
        for _ in range(60):
            client2.get(envoy.url("/products"), headers={"connection": "close"})
    per_endpoint = envoy.requests_per_endpoint()
    assert len(per_endpoint) == 2
    assert all(count > 0 for count in per_endpoint.values()), per_endpoint
    metrics = sidecar.metrics()
    assert (
        'abuse_sidecar_decisions_total{decision="allow",policy="demo/shop",reason=""} 120.0'
        in metrics
    )


def test_sigterm_stops_cleanly(stack: Stack, tmp_path: Path) -> None:
    _write(tmp_path, "shop.yaml", SHOP.format(mode="enforce", hops=0))
    sidecar = stack.sidecar(policies=[tmp_path], workers=2)
    assert sidecar.stop() == 0
