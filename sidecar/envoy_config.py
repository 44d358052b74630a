"""Envoy v3 bootstrap that puts abuse-sidecar in front of an application.

One renderer serves the tests, the demo, the benchmark and the checked-in
``manifests/envoy/*.yaml``, so what we test is what operators deploy.

What the rendered Envoy does, and why:

- **ext_authz (gRPC, V3)** to the ``abuse_sidecar`` cluster (HTTP/2), with
  ``failure_mode_allow: false``: when the sidecar cannot be reached or times out,
  Envoy answers ``403`` itself (``status_on_error``), it never lets traffic
  through unchecked. The timeout (250 ms) must stay above the sidecar's own store
  timeout, or Envoy's 403 wins the race against the sidecar's decision.
- **Request bodies** are sent to the sidecar only on GraphQL routes (exact paths,
  ``pack_as_bytes`` so the bytes arrive unmodified in ``raw_body``); bodies above
  ``max_request_bytes`` get Envoy's own 413 and the sidecar is not called. Keep it
  at or above the largest ``graphql.maxBodyBytes`` of your policies.
- **Headers** reach the sidecar in ``attributes.request.http.headers``: names
  lower-cased, repeated headers joined with ``,``, and bytes that are not UTF-8
  replaced by ``!`` by Envoy, so every CheckRequest decodes in Python
  (``encode_raw_headers: true`` would send raw bytes in ``header_map`` instead
  and leave ``headers`` empty; the sidecar does not expect that).
- **X-Forwarded-For.** ``use_remote_address: true`` makes Envoy take the TCP peer
  as the trusted client address (never a header), and ``xff_num_trusted_hops: 0``
  says no proxy in front of Envoy is trusted *by Envoy*. With
  ``use_remote_address: true`` Envoy would also *append* the peer address to
  X-Forwarded-For before any HTTP filter runs, so the sidecar would see one entry
  more than the proxies in front of Envoy wrote and ``clientIP.xffTrustedHops: n``
  would be off by one. ``skip_xff_append: true`` (our default) keeps the header
  exactly as it arrived: the right-most entry is the one written by the nearest
  proxy in front of Envoy, which is what ``xffTrustedHops`` counts, and
  ``xffTrustedHops: 0`` uses the connection's source address, which the client
  cannot forge. With nothing in front of Envoy keep it at 0: every entry is then
  written by the client. Envoy still derives its own trusted address from the
  peer (``x-envoy-external-address``, its logs).
- ``internal_address_config`` is left unset: since Envoy 1.36 that means no
  client is "internal", so every client's ``x-envoy-*`` headers are removed.
  (An explicit empty ``cidr_ranges`` would bring back the old trust of RFC 1918
  and loopback addresses.)
- **Client-sent ``x-abuse-*`` request headers are removed** before any filter
  runs (early header mutation), so the application only ever sees the
  ``x-abuse-*`` headers the sidecar set.
- **Access log** over gRPC (``envoy.access_loggers.http_grpc``) to the same
  cluster: each entry carries the response code and the dynamic metadata that the
  sidecar returned in its CheckResponse (namespace ``envoy.filters.http.ext_authz``:
  policy, subject, plan, client IP, risk; Envoy adds ``ext_authz_duration``),
  which is how response-code cohorts see who got which status. Only the first
  message of each stream carries the ``identifier`` (``log_name``). Dynamic
  metadata is logged in full; ``filter_state_objects_to_log`` is not used
  because ext_authz's filter-state object does not serialise into this log
  (checked with Envoy 1.40: it arrives empty).
- **One endpoint per sidecar worker** (``--workers N`` serves on PORT..PORT+N-1):
  Envoy keeps one HTTP/2 connection per endpoint per Envoy worker, so N processes
  behind one SO_REUSEPORT port would share at most one connection per Envoy
  worker, placed by the kernel's hash. Least-request balancing over the
  endpoints; gRPC health checks take a dead worker out. Per-endpoint statistics:
  ``/clusters`` shows ``rq_total`` per worker (the access-log stream counts as
  one request per Envoy worker).

Run ``python -m sidecar.envoy_config --help`` to render a configuration.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import yaml

SIDECAR_CLUSTER = "abuse_sidecar"
APP_CLUSTER = "app"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_AUTHZ_METADATA_NAMESPACE = EXT_AUTHZ_FILTER
"""Namespace of the dynamic metadata Envoy stores from a CheckResponse."""
POLICY_CONTEXT_EXTENSION = "abuse-policy"
"""Context extension naming the policy (``ns/name``) a route is bound to."""

_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)
_HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_ALS_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
_EARLY_MUTATION_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
)
_DOWNSTREAM_TLS_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
_MAX_CONNECTIONS_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


class EnvoyConfigError(ValueError):
    """A configuration Envoy would refuse, named before Envoy sees it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ``host:port`` Envoy connects to or listens on."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise EnvoyConfigError("endpoint host is empty")
        if not 0 < self.port < 65536:
            raise EnvoyConfigError(f"endpoint {self.host}:{self.port}: port out of range")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``host:port`` or ``[v6]:port``."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise EnvoyConfigError(f"{text!r} is not host:port")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def consecutive_endpoints(first: Endpoint, count: int) -> tuple[Endpoint, ...]:
    """The endpoints of ``serve --workers count`` whose first worker listens on ``first``."""
    if count < 1:
        raise EnvoyConfigError(f"worker count must be at least 1, not {count}")
    return tuple(Endpoint(first.host, first.port + i) for i in range(count))


@dataclass(frozen=True, slots=True)
class BodySettings:
    """How much request body Envoy buffers and sends to the sidecar."""

    max_request_bytes: int = 262_144
    allow_partial_message: bool = False
    pack_as_bytes: bool = True

    def render(self) -> dict[str, Any]:
        return {
            "max_request_bytes": self.max_request_bytes,
            "allow_partial_message": self.allow_partial_message,
            "pack_as_bytes": self.pack_as_bytes,
        }


@dataclass(frozen=True, slots=True)
class Route:
    """One route; ``path`` matches exactly, ``prefix`` as a prefix (set one)."""

    prefix: str | None = None
    path: str | None = None
    send_body: bool = False
    """Buffer the request body and send it to the sidecar (GraphQL routes)."""
    authz: bool = True
    """False skips the sidecar on this route (e.g. a load balancer's health probe)."""
    context_extensions: Mapping[str, str] = field(default_factory=dict)
    direct_response: int | None = None
    """Envoy answers this status itself instead of forwarding to the application."""

    def __post_init__(self) -> None:
        if (self.prefix is None) == (self.path is None):
            raise EnvoyConfigError("a route needs exactly one of prefix or path")


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """Domains served by one set of routes; ``routes`` empty = the default routes."""

    name: str
    domains: tuple[str, ...] = ("*",)
    context_extensions: Mapping[str, str] = field(default_factory=dict)
    """Sent to the sidecar with every request of this host, e.g. ``{"abuse-policy": "ns/name"}``."""
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """TLS on the listener, optionally verifying client certificates (mTLS).

    With ``client_ca`` set, Envoy validates any certificate a client presents
    against it and hands the verified identity to the sidecar as
    ``source.principal`` (first URI SAN, else first DNS SAN, else the subject):
    what ``identity.mtls: true`` accepts. ``require_client_certificate: False``
    still admits clients without one, so the sidecar decides whether a request
    without a principal is ``missing_credentials``.
    """

    certificate_chain: str
    """PEM file of the listener's certificate (and intermediates)."""
    private_key: str
    client_ca: str | None = None
    """PEM file of the CAs client certificates must chain to; None: no client certificates."""
    require_client_certificate: bool = False

    def render(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": self.certificate_chain},
                    "private_key": {"filename": self.private_key},
                }
            ],
            "alpn_protocols": ["h2", "http/1.1"],
        }
        if self.client_ca is not None:
            common["validation_context"] = {"trusted_ca": {"filename": self.client_ca}}
        return {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _DOWNSTREAM_TLS_TYPE,
                "common_tls_context": common,
                "require_client_certificate": self.require_client_certificate,
            },
        }


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    """Everything that differs between deployments of the same Envoy configuration."""

    sidecar: tuple[Endpoint, ...]
    """gRPC endpoints of the sidecar, one per worker (``serve --workers N`` → N)."""
    upstream: Endpoint | None = None
    """The application; None makes Envoy answer 200 itself (benchmarks measure ext_authz only)."""
    listen: Endpoint = field(default_factory=lambda: Endpoint("0.0.0.0", 8080))
    admin: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 9901))
    ext_authz: bool = True
    """False renders Envoy alone (no sidecar): the benchmark's reference."""
    authz_timeout_ms: int = 250
    body: BodySettings = field(default_factory=BodySettings)
    graphql_paths: tuple[str, ...] = ("/graphql",)
    body_on_all_routes: bool = False
    virtual_hosts: tuple[VirtualHost, ...] = (VirtualHost("default"),)
    include_peer_certificate: bool = True
    encode_raw_headers: bool = False
    access_log: bool = True
    access_log_name: str = "abuse-sidecar"
    access_log_flush_ms: int = 1000
    access_log_request_headers: tuple[str, ...] = ()
    """Request headers each access-log entry carries: those that response cohorts
    key on (``by: header:<name>``). Never name a credential header here."""
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = True
    strip_client_abuse_headers: bool = True
    normalize_path: bool = True
    headers_with_underscores_action: Literal["ALLOW", "REJECT_REQUEST", "DROP_HEADER"] = (
        "REJECT_REQUEST"
    )
    max_request_headers_kb: int = 60
    max_downstream_connections: int = 50_000
    sidecar_max_requests: int = 8192
    """Circuit breaker: concurrent checks in flight before Envoy fails them (→ 403)."""
    health_check_interval_ms: int = 2000
    """gRPC health checks of each sidecar endpoint; 0 disables them."""
    downstream_tls: DownstreamTls | None = None
    """TLS (and client-certificate validation) on the listener; None: plain HTTP."""

    def __post_init__(self) -> None:
        tls = self.downstream_tls
        if tls is not None and tls.require_client_certificate and tls.client_ca is None:
            raise EnvoyConfigError("require_client_certificate needs client_ca to verify with")
        if self.ext_authz and not self.sidecar:
            raise EnvoyConfigError("ext_authz needs at least one sidecar endpoint")
        if self.authz_timeout_ms <= 0:
            raise EnvoyConfigError("authz_timeout_ms must be positive")
        if not self.virtual_hosts:
            raise EnvoyConfigError("at least one virtual host is needed")
        names = [vh.name for vh in self.virtual_hosts]
        if len(set(names)) != len(names):
            raise EnvoyConfigError(f"virtual host names must be unique: {names}")


def local_config(
    *,
    listen_port: int,
    admin_port: int,
    sidecar_ports: Sequence[int],
    upstream_port: int | None,
    **overrides: Any,
) -> EnvoyConfig:
    """Everything on 127.0.0.1: tests, demo and benchmark."""
    loopback = "127.0.0.1"
    return EnvoyConfig(
        sidecar=tuple(Endpoint(loopback, port) for port in sidecar_ports),
        upstream=None if upstream_port is None else Endpoint(loopback, upstream_port),
        listen=Endpoint(loopback, listen_port),
        admin=Endpoint(loopback, admin_port),
        **overrides,
    )


def bootstrap(config: EnvoyConfig) -> dict[str, Any]:
    """The Envoy bootstrap as plain data (YAML/JSON serialisable)."""
    clusters = []
    if config.ext_authz:
        clusters.append(_sidecar_cluster(config))
    if config.upstream is not None:
        clusters.append(_app_cluster(config.upstream))
    return {
        "node": {"id": "abuse-sidecar-gateway", "cluster": "abuse-sidecar-gateway"},
        "admin": {"address": _socket_address(config.admin)},
        "stats_config": {"use_all_default_tags": True},
        "static_resources": {
            "listeners": [_listener(config)],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _MAX_CONNECTIONS_TYPE,
                        "max_active_downstream_connections": config.max_downstream_connections,
                    },
                }
            ]
        },
    }


def render_yaml(config: EnvoyConfig, header: str = "") -> str:
    body = yaml.safe_dump(bootstrap(config), sort_keys=False, default_flow_style=False)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + body


def render_json(config: EnvoyConfig) -> str:
    return json.dumps(bootstrap(config), indent=2)


def _socket_address(endpoint: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}


def _listener(config: EnvoyConfig) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": _connection_manager(config),
            }
        ]
    }
    if config.downstream_tls is not None:
        chain["transport_socket"] = config.downstream_tls.render()
    return {
        "name": "ingress",
        "address": _socket_address(config.listen),
        "filter_chains": [chain],
    }


def _connection_manager(config: EnvoyConfig) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": _HCM_TYPE,
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "xff_num_trusted_hops": config.xff_num_trusted_hops,
        "skip_xff_append": config.skip_xff_append,
        "normalize_path": config.normalize_path,
        "merge_slashes": config.normalize_path,
        "max_request_headers_kb": config.max_request_headers_kb,
        "common_http_protocol_options": {
            "idle_timeout": "3600s",
            "headers_with_underscores_action": config.headers_with_underscores_action,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "stream_idle_timeout": "300s",
        "request_timeout": "300s",
        "route_config": {
            "name": "routes",
            "virtual_hosts": [_virtual_host(config, vh) for vh in config.virtual_hosts],
        },
        "http_filters": _http_filters(config),
    }
    if config.strip_client_abuse_headers:
        hcm["early_header_mutation_extensions"] = [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": _EARLY_MUTATION_TYPE,
                    "mutations": [{"remove_on_match": {"key_matcher": {"prefix": "x-abuse-"}}}],
                },
            }
        ]
    if config.ext_authz and config.access_log:
        hcm["access_log"] = [_grpc_access_log(config)]
    return hcm


def _http_filters(config: EnvoyConfig) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if config.ext_authz:
        filters.append({"name": EXT_AUTHZ_FILTER, "typed_config": _ext_authz(config)})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}})
    return filters


def _grpc_service(config: EnvoyConfig) -> dict[str, Any]:
    return {
        "envoy_grpc": {"cluster_name": SIDECAR_CLUSTER},
        "timeout": _duration_ms(config.authz_timeout_ms),
    }


def _ext_authz(config: EnvoyConfig) -> dict[str, Any]:
    authz: dict[str, Any] = {
        "@type": _EXT_AUTHZ_TYPE,
        "grpc_service": _grpc_service(config),
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "include_peer_certificate": config.include_peer_certificate,
        "encode_raw_headers": config.encode_raw_headers,
        "stat_prefix": "abuse_sidecar",
    }
    if config.body_on_all_routes:
        authz["with_request_body"] = config.body.render()
    return authz


def _grpc_access_log(config: EnvoyConfig) -> dict[str, Any]:
    common: dict[str, Any] = {
        "log_name": config.access_log_name,
        "grpc_service": {"envoy_grpc": {"cluster_name": SIDECAR_CLUSTER}},
        "transport_api_version": "V3",
        "buffer_flush_interval": _duration_ms(config.access_log_flush_ms),
    }
    typed: dict[str, Any] = {"@type": _ALS_TYPE, "common_config": common}
    if config.access_log_request_headers:
        typed["additional_request_headers_to_log"] = [
            name.lower() for name in config.access_log_request_headers
        ]
    typed["additional_response_headers_to_log"] = ["x-abuse-reason", "retry-after"]
    return {"name": "envoy.access_loggers.http_grpc", "typed_config": typed}


def _default_routes(config: EnvoyConfig) -> tuple[Route, ...]:
    graphql = tuple(Route(path=p, send_body=True) for p in config.graphql_paths)
    return (*graphql, Route(prefix="/"))


def _virtual_host(config: EnvoyConfig, vhost: VirtualHost) -> dict[str, Any]:
    routes = vhost.routes or _default_routes(config)
    return {
        "name": vhost.name,
        "domains": list(vhost.domains),
        "routes": [_route(config, vhost, route) for route in routes],
    }


def _route(config: EnvoyConfig, vhost: VirtualHost, route: Route) -> dict[str, Any]:
    match = {"path": route.path} if route.path is not None else {"prefix": route.prefix}
    rendered: dict[str, Any] = {"match": match}
    if route.direct_response is not None:
        rendered["direct_response"] = {"status": route.direct_response}
    elif config.upstream is None:
        rendered["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
    else:
        rendered["route"] = {"cluster": APP_CLUSTER, "timeout": "15s"}
    if config.ext_authz:
        per_route = _ext_authz_per_route(config, vhost, route)
        if per_route:
            rendered["typed_per_filter_config"] = {EXT_AUTHZ_FILTER: per_route}
    return rendered


def _ext_authz_per_route(config: EnvoyConfig, vhost: VirtualHost, route: Route) -> dict[str, Any]:
    if not route.authz:
        return {"@type": _EXT_AUTHZ_PER_ROUTE_TYPE, "disabled": True}
    # Merged here rather than relying on Envoy's per-route merging: the route
    # carries everything the sidecar must see.
    extensions = {**vhost.context_extensions, **route.context_extensions}
    settings: dict[str, Any] = {}
    if extensions:
        settings["context_extensions"] = dict(sorted(extensions.items()))
    if route.send_body and not config.body_on_all_routes:
        settings["with_request_body"] = config.body.render()
    if not settings:
        return {}
    return {"@type": _EXT_AUTHZ_PER_ROUTE_TYPE, "check_settings": settings}


def _cluster_base(name: str, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    # Names need DNS; literal addresses do not (STATIC keeps startup instant).
    dns = not all(endpoint.is_ip for endpoint in endpoints)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(endpoint)}}
                        for endpoint in endpoints
                    ]
                }
            ],
        },
    }
    if dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def _sidecar_cluster(config: EnvoyConfig) -> dict[str, Any]:
    cluster = _cluster_base(SIDECAR_CLUSTER, config.sidecar)
    # Python workers differ in momentary load; least-request steers checks away
    # from a busy one.
    cluster["lb_policy"] = "LEAST_REQUEST"
    cluster["typed_extension_protocol_options"] = {
        _HTTP_OPTIONS_KEY: {
            "@type": _HTTP_OPTIONS_TYPE,
            "explicit_http_config": {
                "http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                }
            },
        }
    }
    cluster["circuit_breakers"] = {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": config.sidecar_max_requests,
                "max_pending_requests": config.sidecar_max_requests,
                "max_requests": config.sidecar_max_requests,
            }
        ]
    }
    cluster["track_cluster_stats"] = {"per_endpoint_stats": True}
    if config.health_check_interval_ms > 0:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": _duration_ms(config.health_check_interval_ms),
                # Without this an idle cluster is probed only once a minute, so a
                # worker that was still starting stays "failed" for that long.
                "no_traffic_interval": _duration_ms(config.health_check_interval_ms),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ]
    return cluster


def _app_cluster(upstream: Endpoint) -> dict[str, Any]:
    cluster = _cluster_base(APP_CLUSTER, (upstream,))
    cluster["lb_policy"] = "ROUND_ROBIN"
    return cluster


def _duration_ms(milliseconds: int) -> str:
    return f"{milliseconds / 1000:.3f}".rstrip("0").rstrip(".") + "s"


# -- checked-in manifests ------------------------------------------------------

KUBERNETES_HEADER = """\
Envoy in front of an application, calling abuse-sidecar (deployment mode).
Generated by: python -m sidecar.envoy_config --profile kubernetes
Do not edit by hand; a test checks this file equals the generator's output.

- abuse-sidecar:9001 is the sidecar's Service. Make it headless (clusterIP: None)
  so Envoy resolves every pod and keeps a connection to each; through a ClusterIP
  Service all of one Envoy worker's checks go to one pod. With
  `serve --workers N`, list abuse-sidecar:9001 .. abuse-sidecar:9001+N-1.
- backend:8080 is your application.
- failure_mode_allow is false: sidecar unreachable or slower than 250ms => 403.
- X-Forwarded-For reaches the sidecar exactly as it arrived (skip_xff_append);
  set the policy's clientIP.xffTrustedHops to the number of proxies in front of
  Envoy that append to it.
"""

SIDECAR_MODE_HEADER = """\
Envoy with abuse-sidecar in the same pod (sidecar mode), talking over localhost.
Generated by: python -m sidecar.envoy_config --profile sidecar
Do not edit by hand; a test checks this file equals the generator's output.

- The sidecar runs `abuse-sidecar serve --grpc-listen 127.0.0.1:9001 --workers 2`:
  worker i listens on 9001+i, and every worker is its own endpoint here, because
  Envoy keeps one HTTP/2 connection per endpoint per Envoy worker.
- The application listens on 127.0.0.1:8080 in the same pod.
- See envoy.yaml for failure mode and X-Forwarded-For handling.
"""


def kubernetes_config() -> EnvoyConfig:
    return EnvoyConfig(
        sidecar=(Endpoint("abuse-sidecar", 9001),),
        upstream=Endpoint("backend", 8080),
        listen=Endpoint("0.0.0.0", 8080),
        admin=Endpoint("127.0.0.1", 9901),
    )


def sidecar_mode_config(workers: int = 2) -> EnvoyConfig:
    return replace(
        kubernetes_config(),
        sidecar=consecutive_endpoints(Endpoint("127.0.0.1", 9001), workers),
        upstream=Endpoint("127.0.0.1", 8080),
        listen=Endpoint("0.0.0.0", 10000),
    )


PROFILES = {
    "kubernetes": (kubernetes_config, KUBERNETES_HEADER),
    "sidecar": (sidecar_mode_config, SIDECAR_MODE_HEADER),
}
"""name → (config factory, header comment) of ``manifests/envoy/``'s files."""

MANIFEST_FILES = {"kubernetes": "envoy.yaml", "sidecar": "envoy-sidecar-mode.yaml"}


def render_profile(name: str) -> str:
    factory, header = PROFILES[name]
    return render_yaml(factory(), header=header)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.envoy_config",
        description="Print an Envoy bootstrap that calls abuse-sidecar.",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), help="a checked-in manifest")
    parser.add_argument("--sidecar", action="append", default=[], metavar="HOST:PORT")
    parser.add_argument("--workers", type=int, default=1, help="endpoints from the first --sidecar")
    parser.add_argument("--upstream", metavar="HOST:PORT")
    parser.add_argument("--listen", default="0.0.0.0:8080", metavar="HOST:PORT")
    parser.add_argument("--admin", default="127.0.0.1:9901", metavar="HOST:PORT")
    parser.add_argument("--json", action="store_true", help="JSON instead of YAML")
    args = parser.parse_args(argv)
    try:
        if args.profile:
            sys.stdout.write(render_profile(args.profile))
            return 0
        sidecars = [Endpoint.parse(s) for s in args.sidecar] or [Endpoint("127.0.0.1", 9001)]
        if args.workers > 1:
            if len(sidecars) != 1:
                parser.error("--workers takes exactly one --sidecar (the first worker's)")
            sidecars = list(consecutive_endpoints(sidecars[0], args.workers))
        config = EnvoyConfig(
            sidecar=tuple(sidecars),
            upstream=Endpoint.parse(args.upstream) if args.upstream else None,
            listen=Endpoint.parse(args.listen),
            admin=Endpoint.parse(args.admin),
        )
    except EnvoyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_json(config) if args.json else render_yaml(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
