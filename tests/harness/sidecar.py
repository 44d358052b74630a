"""abuse-sidecar started the way operators start it: ``python -m sidecar serve ...``.

Worker i of ``--workers N`` serves gRPC on PORT+i, so the gRPC ports are taken
as a block of N consecutive free ports; the admin server stays on one port and
``/readyz`` answers 200 once policies are loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.ports import LOOPBACK, consecutive_free_ports, free_port
from tests.harness.processes import ManagedProcess, http_get, start_process, wait_for_http


def sidecar_command() -> list[str]:
    """How to run the CLI with the interpreter running the tests (the project venv)."""
    return [sys.executable, "-m", "sidecar"]


@dataclass
class SidecarProcess:
    process: ManagedProcess
    grpc_port: int
    """First worker's port; worker i listens on ``grpc_port + i``."""
    workers: int
    admin_port: int
    host: str = LOOPBACK

    @property
    def grpc_ports(self) -> list[int]:
        return [self.grpc_port + i for i in range(self.workers)]

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the first worker, for a grpc channel."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def admin_get(self, path: str) -> tuple[int, str]:
        return http_get(self.admin_url + path, timeout=5)

    def metrics(self) -> str:
        status, body = self.admin_get("/metrics")
        if status != 200:
            raise RuntimeError(f"sidecar /metrics: {status} {body[:300]}")
        return body

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for_http(self.admin_url + "/readyz", timeout=timeout, process=self.process)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (drain in-flight checks, exit), SIGKILL after ``timeout``; the exit code."""
        return self.process.stop(timeout)


def serve_argv(
    *,
    grpc_port: int,
    admin_port: int,
    policies: Sequence[Path | str] = (),
    workers: int = 1,
    default_policy: str | None = None,
    redis_url: str | None = None,
    geoip: Sequence[Path | str] = (),
    extra_args: Sequence[str] = (),
    host: str = LOOPBACK,
) -> list[str]:
    argv = [
        *sidecar_command(),
        "serve",
        "--grpc-listen",
        f"{host}:{grpc_port}",
        "--admin-listen",
        f"{host}:{admin_port}",
    ]
    for path in policies:
        argv += ["--policies", str(path)]
    if workers != 1:
        argv += ["--workers", str(workers)]
    if default_policy is not None:
        argv += ["--default-policy", default_policy]
    if redis_url is not None:
        argv += ["--redis-url", redis_url]
    for path in geoip:
        argv += ["--geoip", str(path)]
    return argv + list(extra_args)


def start_sidecar(
    *,
    log_dir: Path,
    policies: Sequence[Path | str] = (),
    workers: int = 1,
    default_policy: str | None = None,
    redis_url: str | None = None,
    geoip: Sequence[Path | str] = (),
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    ready_timeout: float = 30.0,
    cwd: Path | None = None,
) -> SidecarProcess:
    """Start ``serve`` on free ports; with ``wait_ready`` wait for ``/readyz`` 200."""
    grpc_port = consecutive_free_ports(workers)
    admin_port = free_port()
    argv = serve_argv(
        grpc_port=grpc_port,
        admin_port=admin_port,
        policies=policies,
        workers=workers,
        default_policy=default_policy,
        redis_url=redis_url,
        geoip=geoip,
        extra_args=extra_args,
    )
    process = start_process(f"sidecar-{grpc_port}", argv, log_dir=log_dir, env=env, cwd=cwd)
    sidecar = SidecarProcess(process, grpc_port, workers, admin_port)
    if wait_ready:
        try:
            sidecar.wait_ready(ready_timeout)
        except BaseException:
            process.stop()
            raise
    return sidecar
