"""The harness and the rendered Envoy configuration, proven through real Envoy.

The authorizer here is the do-nothing server in recording mode, so these tests
show what our Envoy configuration delivers to any authorizer (headers, XFF,
body, context extensions, access log) independently of the sidecar.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from sidecar.envoy_config import EXT_AUTHZ_METADATA_NAMESPACE, BodySettings, VirtualHost
from tests.harness.noop_authz import RECORDED_METADATA, NoopAuthzProcess
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e


def _wait_for(condition: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


def test_request_passes_through_envoy_and_authorizer(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app)

    response = httpx.get(envoy.url("/hello?x=1"))

    assert response.status_code == 200
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("GET", "/hello", "x=1")
    # Headers the authorizer put into its OK response reached the application.
    assert echoed["headers"]["x-noop-source"] == "127.0.0.1"
    assert [c["path"] for c in noop.records("check")] == ["/hello?x=1"]


def test_authorizer_down_means_403_not_pass_through(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz()
    envoy = stack.envoy(noop, app)
    assert httpx.get(envoy.url("/before")).status_code == 200

    noop.stop()
    response = httpx.get(envoy.url("/after"))

    assert response.status_code == 403
    assert app.requests_to("/after") == []


def test_envoy_alone_serves_without_authorizer(stack: Stack) -> None:
    app = stack.upstream()
    envoy = stack.envoy(None, app)

    assert httpx.get(envoy.url("/plain")).json()["path"] == "/plain"


def test_envoy_answers_itself_without_upstream(stack: Stack) -> None:
    noop = stack.noop_authz()
    envoy = stack.envoy(noop, None)

    response = httpx.get(envoy.url("/anything"))

    assert (response.status_code, response.text) == (200, "ok\n")


def test_x_forwarded_for_reaches_authorizer_and_upstream_unaltered(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app)
    chain = "203.0.113.7, 198.51.100.1"

    with_xff = httpx.get(envoy.url("/xff"), headers={"x-forwarded-for": chain}).json()
    without = httpx.get(envoy.url("/no-xff")).json()

    assert with_xff["headers"]["x-noop-xff"] == chain
    assert with_xff["headers"]["x-forwarded-for"] == chain
    assert without["headers"]["x-noop-xff"] == "-"
    assert "x-forwarded-for" not in without["headers"]
    # Envoy's own view of the client is the TCP peer, never a header.
    assert with_xff["headers"]["x-envoy-external-address"] == "127.0.0.1"


def test_client_sent_abuse_headers_never_reach_authorizer_or_upstream(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app)
    forged = {"x-abuse-subject": "admin", "x-abuse-plan": "gold", "X-Abuse-Policy": "none"}

    echoed = httpx.get(envoy.url("/forged"), headers=forged).json()

    assert not [h for h in echoed["headers"] if h.startswith("x-abuse-")]
    (check,) = noop.records("check")
    assert not [h for h in check["headers"] if h.startswith("x-abuse-")]


def test_client_x_envoy_headers_are_removed(stack: Stack) -> None:
    app = stack.upstream()
    envoy = stack.envoy(None, app)

    echoed = httpx.get(envoy.url("/"), headers={"x-envoy-internal": "true"}).json()

    assert "x-envoy-internal" not in echoed["headers"]


def test_context_extensions_follow_the_virtual_host(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    bound = VirtualHost(
        "bound",
        domains=("bound.test", "bound.test:*"),
        context_extensions={"abuse-policy": "shop/reviews"},
    )
    envoy = stack.envoy(noop, app, virtual_hosts=(bound, VirtualHost("default")))

    on_bound = httpx.get(envoy.url("/graphql"), headers={"host": "bound.test"}).json()
    on_bound_plain = httpx.get(envoy.url("/x"), headers={"host": "bound.test:8080"}).json()
    elsewhere = httpx.get(envoy.url("/x"), headers={"host": "other.test"}).json()

    expected = {"abuse-policy": "shop/reviews"}
    assert json.loads(on_bound["headers"]["x-noop-context-extensions"]) == expected
    assert json.loads(on_bound_plain["headers"]["x-noop-context-extensions"]) == expected
    assert json.loads(elsewhere["headers"]["x-noop-context-extensions"]) == {}


def test_body_is_sent_on_graphql_routes_only(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app, body=BodySettings(max_request_bytes=1024))
    query = b'{"query": "{ viewer { login } }"}'

    graphql = httpx.post(envoy.url("/graphql"), content=query).json()
    other = httpx.post(envoy.url("/upload"), content=query).json()
    too_big = httpx.post(envoy.url("/graphql"), content=b"x" * 2048)

    assert graphql["headers"]["x-noop-body-bytes"] == str(len(query))
    assert other["headers"]["x-noop-body-bytes"] == "0"
    assert other["body_bytes"] == len(query)  # the application still gets it
    # Above max_request_bytes Envoy refuses the request without asking the authorizer.
    assert too_big.status_code == 413
    assert len(noop.records("check")) == 2


def test_body_on_all_routes_when_configured(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app, body_on_all_routes=True)

    echoed = httpx.post(envoy.url("/upload"), content=b"12345").json()

    assert echoed["headers"]["x-noop-body-bytes"] == "5"


def _raw_get(port: int, header_line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /bytes HTTP/1.1\r\nHost: x\r\n" + header_line + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_non_utf8_header_bytes_reach_authorizer_as_decodable_text(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app)

    answer = _raw_get(envoy.config.listen.port, b"X-Weird: \xff\xfe caf\xc3\xa9")

    assert answer.startswith(b"HTTP/1.1 200 ")
    (check,) = noop.records("check")
    # Envoy replaced the invalid bytes; valid UTF-8 (é) is kept.
    assert check["headers"]["x-weird"] == "!! café"


def _access_log(noop: NoopAuthzProcess, path: str) -> dict[str, Any] | None:
    entries = [e for e in noop.records("access_log") if e["path"] == path]
    return entries[0] if entries else None


def test_access_log_carries_status_and_authorizer_metadata(stack: Stack) -> None:
    app = stack.upstream()
    noop = stack.noop_authz(record=True)
    envoy = stack.envoy(noop, app, access_log_flush_ms=50)

    httpx.get(envoy.url("/deny-403"))
    httpx.get(envoy.url("/fine"))

    denied = _wait_for(lambda: _access_log(noop, "/deny-403"))
    fine = _wait_for(lambda: _access_log(noop, "/fine"))
    assert denied["status"] == 403
    assert fine["status"] == 200
    metadata = fine["metadata"]["filterMetadata"][EXT_AUTHZ_METADATA_NAMESPACE]
    assert {k: metadata[k] for k in RECORDED_METADATA} == RECORDED_METADATA
    assert denied["log_name"] == fine["log_name"] == "abuse-sidecar"


def test_checks_spread_over_every_authorizer_endpoint(stack: Stack) -> None:
    app = stack.upstream()
    first, second = stack.noop_authz(), stack.noop_authz()
    # Without the access log, whose streams would count as requests too.
    envoy = stack.envoy([first.port, second.port], app, concurrency=2, access_log=False)
    envoy.wait_for_healthy_endpoints()

    with httpx.Client() as client:
        for _ in range(40):
            assert client.get(envoy.url("/spread")).status_code == 200

    per_endpoint = envoy.requests_per_endpoint()
    assert set(per_endpoint) == {f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"}
    # Health checks are not requests: only the 40 checks are counted.
    assert sum(per_endpoint.values()) == 40
    assert min(per_endpoint.values()) > 0


def test_several_envoys_run_at_once(stack: Stack) -> None:
    app = stack.upstream()
    one, two = stack.envoy(None, app), stack.envoy(None, app)

    assert httpx.get(one.url("/one")).status_code == 200
    assert httpx.get(two.url("/two")).status_code == 200
    assert one.process.alive()
    assert two.process.alive()
