"""One test's processes: upstream, authorizer (sidecar or do-nothing), Envoy.

A ``Stack`` starts each part on free ports, remembers it, stops everything in
reverse order on ``close()`` and can print every process's log when a test
fails (the ``stack`` fixture in ``tests/conftest.py`` does both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.envoy import EnvoyProcess, start_local_envoy
from tests.harness.noop_authz import NoopAuthzProcess, start_noop_authz
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess
from tests.harness.sidecar import SidecarProcess, start_sidecar
from tests.harness.upstream import DEFAULT_STATUSES, UpstreamServer

Authorizer = SidecarProcess | NoopAuthzProcess


def _authorizer_ports(authorizer: Authorizer | Sequence[int]) -> list[int]:
    if isinstance(authorizer, SidecarProcess):
        return authorizer.grpc_ports
    if isinstance(authorizer, NoopAuthzProcess):
        return [authorizer.port]
    return list(authorizer)


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._processes: list[ManagedProcess] = []
        self._closers: list[Callable[[], object]] = []

    def upstream(self, statuses: Mapping[str, int] | None = None) -> UpstreamServer:
        """The echoing application on a free port (``statuses``: path → status,
        default ``DEFAULT_STATUSES``)."""
        chosen = DEFAULT_STATUSES if statuses is None else statuses
        server = UpstreamServer(free_port(), statuses=chosen).start()
        self._closers.append(server.stop)
        return server

    def noop_authz(self, *, record: bool = False) -> NoopAuthzProcess:
        """The do-nothing ext_authz server; ``record=True`` makes it log what arrives."""
        noop = start_noop_authz(log_dir=self.log_dir, record=record)
        self._track(noop.process, noop.stop)
        return noop

    def sidecar(self, **kwargs: Any) -> SidecarProcess:
        """``abuse-sidecar serve``; keyword arguments as ``start_sidecar`` (policies=..., workers=...)."""
        sidecar = start_sidecar(log_dir=self.log_dir, **kwargs)
        self._track(sidecar.process, sidecar.stop)
        return sidecar

    def envoy(
        self,
        authorizer: Authorizer | Sequence[int] | None,
        upstream: UpstreamServer | int | None,
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        **overrides: Any,
    ) -> EnvoyProcess:
        """Envoy calling ``authorizer`` (None: no ext_authz at all) in front of ``upstream``
        (None: Envoy answers 200 itself); ``overrides`` are ``EnvoyConfig`` fields."""
        if authorizer is None:
            overrides.setdefault("ext_authz", False)
            ports: list[int] = []
        else:
            ports = _authorizer_ports(authorizer)
        upstream_port = upstream.port if isinstance(upstream, UpstreamServer) else upstream
        envoy = start_local_envoy(
            sidecar_ports=ports,
            upstream_port=upstream_port,
            log_dir=self.log_dir,
            concurrency=concurrency,
            log_level=log_level,
            **overrides,
        )
        self._track(envoy.process, envoy.stop)
        return envoy

    def _track(self, process: ManagedProcess, stop: Callable[[], object]) -> None:
        self._processes.append(process)
        self._closers.append(stop)

    def describe(self) -> str:
        """Every process's state and log tail."""
        return "\n".join(process.describe() for process in self._processes)

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            with contextlib.suppress(Exception):
                closer()
