"""The Envoy bootstrap renderer: what it promises, and that Envoy accepts it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sidecar import envoy_config
from sidecar.envoy_config import (
    EXT_AUTHZ_FILTER,
    MANIFEST_FILES,
    BodySettings,
    Endpoint,
    EnvoyConfigError,
    Route,
    VirtualHost,
    bootstrap,
    consecutive_endpoints,
    local_config,
    render_json,
    render_profile,
)
from tests.harness.envoy import validate_config

REPO = Path(__file__).resolve().parents[2]


def _local(**overrides: Any) -> envoy_config.EnvoyConfig:
    return local_config(
        listen_port=10000, admin_port=9901, sidecar_ports=[9001], upstream_port=8000, **overrides
    )


def _hcm(config: envoy_config.EnvoyConfig) -> dict[str, Any]:
    listener = bootstrap(config)["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _routes(config: envoy_config.EnvoyConfig, vhost: int = 0) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(config)["route_config"]["virtual_hosts"][vhost]["routes"]
    return routes


def _cluster(config: envoy_config.EnvoyConfig, name: str) -> dict[str, Any]:
    clusters = bootstrap(config)["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == name]
    return dict(cluster)


@pytest.mark.parametrize("profile", sorted(MANIFEST_FILES))
def test_checked_in_manifest_equals_the_generator(profile: str) -> None:
    path = REPO / "manifests" / "envoy" / MANIFEST_FILES[profile]
    assert path.read_text() == render_profile(profile), (
        f"regenerate: python -m sidecar.envoy_config --profile {profile} > {path}"
    )


@pytest.mark.parametrize("profile", sorted(MANIFEST_FILES))
def test_envoy_accepts_checked_in_manifest(profile: str, envoy_bin: Path) -> None:
    result = validate_config(REPO / "manifests" / "envoy" / MANIFEST_FILES[profile])
    assert result.returncode == 0, result.stdout + result.stderr


VARIANTS = {
    "local": _local(),
    "envoy-alone": _local(ext_authz=False),
    "direct-response": replace(_local(), upstream=None),
    "body-everywhere": _local(body_on_all_routes=True),
    "no-access-log-no-health-checks": _local(access_log=False, health_check_interval_ms=0),
    "workers": replace(_local(), sidecar=consecutive_endpoints(Endpoint("127.0.0.1", 9001), 4)),
    "custom-routes": _local(
        virtual_hosts=(
            VirtualHost(
                "bound",
                domains=("api.example.com",),
                context_extensions={"abuse-policy": "shop/reviews"},
                routes=(
                    Route(path="/healthz", authz=False),
                    Route(path="/graphql", send_body=True, context_extensions={"tier": "gql"}),
                    Route(prefix="/teapot", direct_response=418),
                    Route(prefix="/"),
                ),
            ),
            VirtualHost("default"),
        )
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_envoy_accepts_every_variant(name: str, tmp_path: Path, envoy_bin: Path) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(render_json(VARIANTS[name]))
    result = validate_config(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ext_authz_fails_closed_over_grpc_v3() -> None:
    filters = _hcm(_local(authz_timeout_ms=300))["http_filters"]
    assert [f["name"] for f in filters] == [EXT_AUTHZ_FILTER, "envoy.filters.http.router"]
    authz = filters[0]["typed_config"]
    assert authz["failure_mode_allow"] is False
    assert authz["transport_api_version"] == "V3"
    assert authz["include_peer_certificate"] is True
    assert authz["grpc_service"] == {
        "envoy_grpc": {"cluster_name": "abuse_sidecar"},
        "timeout": "0.3s",
    }
    assert "with_request_body" not in authz


def test_default_timeout_is_250ms() -> None:
    authz = _hcm(_local())["http_filters"][0]["typed_config"]
    assert authz["grpc_service"]["timeout"] == "0.25s"


def test_body_buffering_only_on_graphql_routes() -> None:
    routes = _routes(_local(graphql_paths=("/graphql", "/api/graphql")))
    assert [r["match"] for r in routes] == [
        {"path": "/graphql"},
        {"path": "/api/graphql"},
        {"prefix": "/"},
    ]
    for graphql in routes[:2]:
        settings = graphql["typed_per_filter_config"][EXT_AUTHZ_FILTER]["check_settings"]
        assert settings["with_request_body"] == {
            "max_request_bytes": 262144,
            "allow_partial_message": False,
            "pack_as_bytes": True,
        }
    assert "typed_per_filter_config" not in routes[2]


def test_body_on_all_routes_moves_buffering_to_the_filter() -> None:
    config = _local(body_on_all_routes=True, body=BodySettings(max_request_bytes=4096))
    authz = _hcm(config)["http_filters"][0]["typed_config"]
    assert authz["with_request_body"]["max_request_bytes"] == 4096
    assert all("typed_per_filter_config" not in r for r in _routes(config))


def test_route_extensions_are_merged_over_the_virtual_host() -> None:
    config = VARIANTS["custom-routes"]
    health, graphql, teapot, _ = _routes(config)
    assert health["typed_per_filter_config"][EXT_AUTHZ_FILTER] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    }
    settings = graphql["typed_per_filter_config"][EXT_AUTHZ_FILTER]["check_settings"]
    assert settings["context_extensions"] == {"abuse-policy": "shop/reviews", "tier": "gql"}
    assert teapot["direct_response"] == {"status": 418}


def test_xff_is_left_as_it_arrived_and_the_peer_is_trusted() -> None:
    hcm = _hcm(_local())
    assert hcm["use_remote_address"] is True
    assert hcm["xff_num_trusted_hops"] == 0
    assert hcm["skip_xff_append"] is True
    # Unset on purpose: an explicit empty list would trust RFC 1918 and loopback.
    assert "internal_address_config" not in hcm


def test_client_abuse_headers_are_stripped_early() -> None:
    (mutation,) = _hcm(_local())["early_header_mutation_extensions"]
    assert mutation["typed_config"]["mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": "x-abuse-"}}}
    ]
    assert "early_header_mutation_extensions" not in _hcm(_local(strip_client_abuse_headers=False))


def test_access_log_goes_to_the_sidecar_cluster() -> None:
    (log,) = _hcm(_local(access_log_name="gw"))["access_log"]
    assert log["name"] == "envoy.access_loggers.http_grpc"
    common = log["typed_config"]["common_config"]
    assert common["log_name"] == "gw"
    assert common["grpc_service"] == {"envoy_grpc": {"cluster_name": "abuse_sidecar"}}
    assert common["transport_api_version"] == "V3"
    assert "access_log" not in _hcm(_local(ext_authz=False))


def test_sidecar_cluster_speaks_http2_with_one_endpoint_per_worker() -> None:
    config = replace(_local(), sidecar=consecutive_endpoints(Endpoint("127.0.0.1", 9001), 3))
    cluster = _cluster(config, "abuse_sidecar")
    assert cluster["type"] == "STATIC"
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
    assert ports == [9001, 9002, 9003]
    options = cluster["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]
    assert cluster["track_cluster_stats"] == {"per_endpoint_stats": True}


def test_names_use_dns_and_addresses_do_not() -> None:
    config = envoy_config.kubernetes_config()
    assert _cluster(config, "abuse_sidecar")["type"] == "STRICT_DNS"
    assert _cluster(config, "app")["type"] == "STRICT_DNS"
    assert _cluster(_local(), "app")["type"] == "STATIC"


def test_without_upstream_envoy_answers_itself() -> None:
    config = replace(_local(), upstream=None)
    assert [c["name"] for c in bootstrap(config)["static_resources"]["clusters"]] == [
        "abuse_sidecar"
    ]
    assert all(r["direct_response"]["status"] == 200 for r in _routes(config))


def test_rendered_yaml_and_json_are_the_same_bootstrap() -> None:
    config = _local()
    assert yaml.safe_load(envoy_config.render_yaml(config, header="a\nb")) == bootstrap(config)
    assert envoy_config.render_yaml(config, header="a\nb").startswith("# a\n# b\n")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: replace(_local(), sidecar=()), "at least one sidecar"),
        (lambda: _local(authz_timeout_ms=0), "positive"),
        (lambda: _local(virtual_hosts=()), "virtual host"),
        (lambda: _local(virtual_hosts=(VirtualHost("a"), VirtualHost("a"))), "unique"),
        (Route, "exactly one"),
        (lambda: Route(path="/a", prefix="/"), "exactly one"),
        (lambda: Endpoint("h", 0), "port out of range"),
        (lambda: Endpoint.parse("no-port"), "host:port"),
        (lambda: consecutive_endpoints(Endpoint("h", 1), 0), "at least 1"),
    ],
)
def test_impossible_configurations_are_named(build: Any, message: str) -> None:
    with pytest.raises(EnvoyConfigError, match=message):
        build()


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
)


@given(host=hosts, port=st.integers(1, 65535))
def test_endpoint_text_round_trips(host: str, port: int) -> None:
    endpoint = Endpoint(host, port)
    assert Endpoint.parse(str(endpoint)) == endpoint


def test_cli_renders_workers_as_consecutive_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    assert envoy_config.main(["--sidecar", "127.0.0.1:9001", "--workers", "2", "--json"]) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    (cluster,) = rendered["static_resources"]["clusters"]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
        9001,
        9002,
    ]


def test_cli_names_a_bad_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert envoy_config.main(["--upstream", "nonsense"]) == 2
    assert "'nonsense' is not host:port" in capsys.readouterr().err
