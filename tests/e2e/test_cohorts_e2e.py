"""Issue 7 through real Envoy: response-code cohorts from the access-log stream,
request cohorts in the Check path, memberships that expire, notifications and
the admin API of members.

Envoy's gRPC access logger flushes every 200 ms here (``access_log_flush_ms``),
so a response reaches the sidecar well within the waits below.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e

HOST = "api.example.test"
POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: shop, namespace: demo}}
spec:
  hosts: [{host}]
  cohorts:
    - name: forbidden-hunters
      match: {{paths: [/deny-403]}}
      responseCodes: [403]
      by: ip
      threshold: 3
      period: 1m
      action: flag
      for: 2s
      notify: [hook]
    - name: review-flood
      match: {{methods: [POST], paths: [/reviews]}}
      by: ip
      threshold: 3
      period: 1m
      action: block
      for: 2s
  notifications:
    - name: hook
      webhook: {{url: "{hook}", secret: e2e-secret}}
"""


def _eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _get(url: str) -> httpx.Response:
    return httpx.get(url, headers={"host": HOST}, timeout=10)


def _flags_seen_upstream(url: str) -> str:
    response = _get(url)
    assert response.status_code == 200, response.text
    return str(response.json()["headers"].get("x-abuse-flags", ""))


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer((LOOPBACK, free_port()), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _start(stack: Stack, tmp_path: Path, hook_url: str) -> tuple[Any, Any, Any]:
    (tmp_path / "shop.yaml").write_text(POLICY.format(host=HOST, hook=hook_url))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path])
    envoy = stack.envoy(sidecar, app, access_log_flush_ms=200)
    return app, sidecar, envoy


def test_upstream_403s_flag_the_client_once_and_the_flag_expires(
    stack: Stack, tmp_path: Path, hook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    hook_url, received = hook
    app, _, envoy = _start(stack, tmp_path, hook_url)
    products = envoy.url("/products")
    assert _flags_seen_upstream(products) == ""

    for _ in range(3):
        assert _get(envoy.url("/deny-403")).status_code == 403  # the upstream's answer
    assert len(app.requests_to("/deny-403")) == 3

    flagged = _eventually(lambda: _flags_seen_upstream(products) == "forbidden-hunters")
    assert flagged, "the third 403 did not make the client a member"
    # Exactly one notification for this membership, signed.
    assert _eventually(lambda: len(received) == 1)
    time.sleep(0.5)
    assert len(received) == 1
    headers, body = received[0]
    payload = json.loads(body)
    assert payload["cohort"] == "forbidden-hunters"
    assert payload["key"] == "ip=127.0.0.1"
    assert payload["sample"]["status"] == 403
    assert headers["x-abuse-signature"].startswith("sha256=")

    # for: 2s — then the client is no longer flagged.
    assert _eventually(lambda: _flags_seen_upstream(products) == "", timeout=6)


def test_request_cohort_blocks_every_route_until_for_ends(
    stack: Stack, tmp_path: Path, hook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    app, _, envoy = _start(stack, tmp_path, hook[0])
    for _ in range(3):
        response = httpx.post(envoy.url("/reviews"), headers={"host": HOST}, content=b"{}")
        assert response.status_code == 200
    blocked = _get(envoy.url("/products"))
    assert blocked.status_code == 403
    assert blocked.headers["x-abuse-reason"] == "cohort_blocked"
    assert blocked.json()["rule"] == "review-flood"
    assert app.requests_to("/products") == []
    assert _eventually(lambda: _get(envoy.url("/products")).status_code == 200, timeout=6)


def test_admin_api_lists_and_ends_memberships(
    stack: Stack, tmp_path: Path, hook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    (tmp_path / "shop.yaml").write_text(
        POLICY.format(host=HOST, hook=hook[0]).replace("for: 2s", "for: 1h")
    )
    sidecar = stack.sidecar(policies=[tmp_path])
    envoy = stack.envoy(sidecar, stack.upstream(), access_log_flush_ms=200)
    for _ in range(3):
        httpx.post(envoy.url("/reviews"), headers={"host": HOST}, content=b"{}")
    assert _get(envoy.url("/products")).status_code == 403

    status, text = sidecar.admin_get("/cohorts/members?policy=demo/shop")
    assert status == 200
    (member,) = json.loads(text)["members"]
    assert (member["cohort"], member["key"]) == ("review-flood", "ip=127.0.0.1")
    assert 3500 < member["ttlSeconds"] <= 3600
    gauge = 'abuse_sidecar_cohort_members{cohort="review-flood",policy="demo/shop"} 1.0'
    assert gauge in sidecar.metrics()

    query = urlencode({"policy": "demo/shop", "cohort": "review-flood", "key": "ip=127.0.0.1"})
    removed = httpx.delete(f"{sidecar.admin_url}/cohorts/members?{query}", timeout=5)
    assert removed.status_code == 200
    assert removed.json()["removed"] is True
    assert _get(envoy.url("/products")).status_code == 200
    assert gauge.replace("1.0", "0.0") in sidecar.metrics()


TENANT_POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: tenants, namespace: demo}}
spec:
  hosts: [{host}]
  cohorts:
    - name: forbidden-tenants
      match: {{paths: [/deny-403]}}
      responseCodes: [403]
      by: header:x-tenant-id
      threshold: 2
      period: 1m
      action: block
      for: 5s
"""


def test_a_response_cohort_keyed_by_a_request_header_the_access_log_carries(
    stack: Stack, tmp_path: Path
) -> None:
    """``by: header:<name>`` on responses works once Envoy logs that request header
    (``access_log_request_headers``; chart value ``envoy.accessLogRequestHeaders``)."""
    (tmp_path / "tenants.yaml").write_text(TENANT_POLICY.format(host=HOST))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[tmp_path])
    envoy = stack.envoy(
        sidecar, app, access_log_flush_ms=200, access_log_request_headers=("X-Tenant-ID",)
    )

    def get(path: str, tenant: str) -> httpx.Response:
        return httpx.get(envoy.url(path), headers={"host": HOST, "x-tenant-id": tenant}, timeout=10)

    for _ in range(2):
        assert get("/deny-403", "acme").status_code == 403  # the upstream's 403s
    blocked = _eventually(lambda: get("/products", "acme").status_code == 403)
    assert blocked, "two upstream 403s did not put tenant acme in the cohort"
    denial = get("/products", "acme")
    assert denial.headers["x-abuse-reason"] == "cohort_blocked"
    # Another tenant from the same address is a different key.
    assert get("/products", "globex").status_code == 200
