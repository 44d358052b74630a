"""``abuse-sidecar serve``: assembles the process and runs it until SIGTERM.

With ``--workers 1`` one process serves gRPC and admin HTTP. With ``--workers N``
this process is a supervisor: it serves admin HTTP (aggregating the workers'
metrics) and runs N worker processes, worker i serving gRPC on the gRPC port + i.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry, PolicySnapshot
from sidecar.errors import StoreUnavailable
from sidecar.observability import metrics
from sidecar.observability.decision_log import DecisionLog, install_redaction
from sidecar.pipeline.engine import Engine
from sidecar.server.admin import AdminServer, Readiness
from sidecar.server.authz import Authorizer
from sidecar.server.grpc_server import GrpcServer
from sidecar.settings import WORKER_ENV, Settings
from sidecar.sources.files import FilePolicySource
from sidecar.stores.base import Store
from sidecar.stores.memory import MemoryStore

if TYPE_CHECKING:
    from sidecar.sources.kubernetes import KubernetesSource
    from sidecar.sources.status import StatusWriter

log = logging.getLogger("sidecar.app")
# How long start() waits for the first Kubernetes list before serving anyway (not ready).
KUBERNETES_FIRST_SYNC_SECONDS = 10.0


def open_store(settings: Settings) -> Store:
    if not settings.redis_url or settings.redis_url.startswith("memory:"):
        return MemoryStore()
    from sidecar.stores.open import open_store as open_url

    return open_url(
        settings.redis_url,
        command_timeout_ms=settings.store_timeout_ms,
        on_error=lambda store: metrics.STORE_ERRORS.labels(store).inc(),
    )


def _publish_policy_gauge(snapshot: PolicySnapshot) -> None:
    counts = {"ready": 0, "invalid": 0}
    for policy in snapshot.states:
        counts[policy.state] = counts.get(policy.state, 0) + 1
    for state, count in counts.items():
        metrics.POLICIES.labels(state).set(count)


class Application:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resources = Resources()
        self.store: Store = MemoryStore()
        self.registry = PolicyRegistry(self.resources, settings.default_policy)
        self.registry.subscribe(_publish_policy_gauge)
        self.files = FilePolicySource(self.registry, settings.policies)
        self.kubernetes: KubernetesSource | None = None
        self.status_writer: StatusWriter | None = None
        self._closers: list[Any] = []
        self._workers: list[subprocess.Popen[bytes]] = []
        self.grpc: GrpcServer | None = None
        self.admin: AdminServer | None = None
        install_redaction()  # every log line of the process, whoever writes it

    @property
    def is_worker(self) -> bool:
        return self.settings.worker_index is not None

    @property
    def serves_grpc(self) -> bool:
        return self.is_worker or self.settings.workers == 1

    async def _open_resources(self) -> None:
        s = self.settings
        if s.geoip:
            from sidecar.iprep.mmdb import GeoIpDatabases

            geoip = GeoIpDatabases(list(s.geoip), poll_seconds=s.geoip_poll_seconds)
            await geoip.start()
            self.resources.geoip = geoip
            self._closers.append(geoip.aclose)
        from sidecar.identity.api_keys import SecretKeyTable
        from sidecar.identity.jwks import JwksRegistry

        jwks = JwksRegistry()
        await jwks.start()
        self.resources.jwks = jwks
        self.resources.secret_keys = SecretKeyTable()
        self._closers.append(jwks.aclose)

    async def _open_notifier(self) -> None:
        """Cohort notifications: compiled policies hand membership events to it."""
        from sidecar.cohorts.notify import Notifier
        from sidecar.cohorts.smtp import SmtpSettings

        s = self.settings
        smtp = SmtpSettings.parse(s.smtp_url, s.smtp_from) if s.smtp_url else None
        notifier = Notifier(smtp_settings=smtp)
        await notifier.start()
        self.resources.notifier = notifier
        self._closers.append(notifier.aclose)

    async def start(self) -> None:
        s = self.settings
        await self._open_resources()
        await self._open_notifier()
        self.store = open_store(s)
        self._closers.append(self.store.close)
        self.files.load_all()
        await self.files.start()
        self._closers.append(self.files.aclose)
        if s.kubernetes:
            await self._start_kubernetes()
        if self.serves_grpc:
            from sidecar.cohorts.als import AccessLogReceiver

            fallback = MemoryStore()  # failureMode open: shared by Check and the access-log stream
            tracing = None
            if s.otlp_endpoint:
                from sidecar.observability.tracing import start_tracing

                tracing = await start_tracing(s.otlp_endpoint, s.trace_sampling)
                self._closers.append(tracing.aclose)  # after gRPC stopped: flushes the last spans
            authorizer = Authorizer(
                self.registry,
                Engine(self.store, fallback),
                tracing=tracing,
                decision_log=DecisionLog(json_fields=s.log_format == "json"),
                decision_metadata=s.decision_metadata,
            )
            access_logs = AccessLogReceiver(lambda: self.registry.current, self.store, fallback)
            self.grpc = GrpcServer(
                authorizer, s.grpc_listen_for_worker(), extra_services=[access_logs.register]
            )
            await self.grpc.start()
        else:
            self._spawn_workers()
        if not self.is_worker:
            from sidecar.cohorts.members import CohortMembers

            members = CohortMembers(self.store, lambda: self.registry.current)
            self.admin = AdminServer(s.admin_listen, self.readiness, self.policies_view)
            self.admin.add_route("GET", "/cohorts/members", members.list_members)
            self.admin.add_route("DELETE", "/cohorts/members", members.remove_member)
            await self.admin.start()
            await members.start()  # abuse_sidecar_cohort_members
            self._closers.append(members.aclose)

    async def _start_kubernetes(self) -> None:
        """Watch the cluster; the supervisor (or the only process) also writes status."""
        from sidecar.sources.kubernetes import KubernetesSource

        source = KubernetesSource(
            self.registry, self.resources.secret_keys, self.settings.namespaces
        )
        await source.start()
        self._closers.append(source.aclose)
        self.kubernetes = source
        if not self.is_worker:
            from sidecar.sources.status import StatusWriter

            writer = StatusWriter.for_source(source, self.registry)
            await writer.start()
            self._closers.append(writer.aclose)  # closed first: releases the Lease
            self.status_writer = writer
        if not await source.wait_synced(KUBERNETES_FIRST_SYNC_SECONDS):
            log.warning("serving before the first Kubernetes list: %s", source.unready_reasons())

    def _spawn_workers(self) -> None:
        metrics.clear_stale_files()  # a reused PROMETHEUS_MULTIPROC_DIR: pids of another run
        for index in range(self.settings.workers):
            env = dict(os.environ)
            env[WORKER_ENV] = str(index)
            argv = [sys.executable, "-m", "sidecar", *sys.argv[1:]]
            self._workers.append(subprocess.Popen(argv, env=env))
        log.info("started %d worker processes", len(self._workers))

    async def readiness(self) -> Readiness:
        reasons: list[str] = []
        snapshot = self.registry.current
        if not self.registry.initialised:
            reasons.append("policies not loaded yet")
        if self.kubernetes is not None:
            reasons.extend(self.kubernetes.unready_reasons())
        try:
            await asyncio.wait_for(self.store.ping(), 1.0)
            store_state = "up"
        except (StoreUnavailable, TimeoutError) as exc:
            reasons.append(f"store {self.store.name} unavailable: {exc}")
            store_state = "down"
        dead = [i for i, w in enumerate(self._workers) if w.poll() is not None]
        if dead:
            reasons.append(f"worker processes exited: {dead}")
        elif self._workers:
            silent = [i for i in range(len(self._workers)) if not await self._worker_listening(i)]
            if silent:
                reasons.append(f"worker processes not listening yet: {silent}")
        details: dict[str, Any] = {
            "policies": snapshot.loaded,
            "store": {"name": self.store.name, "state": store_state},
            "workers": self.settings.workers,
        }
        geoip = self.resources.geoip
        if geoip is not None:
            details["geoip"] = geoip.describe()
        if self.kubernetes is not None:
            details["kubernetes"] = {"synced": self.kubernetes.synced}
        return Readiness(not reasons, reasons, details)

    async def _worker_listening(self, index: int) -> bool:
        host, _, port = self.settings.grpc_listen.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port) + index), 0.5
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    def policies_view(self) -> dict[str, Any]:
        snapshot = self.registry.current
        by_id = snapshot.index.by_id
        out: dict[str, Any] = {
            "generation": snapshot.version,
            "policies": [
                {
                    **state.as_dict(),
                    "hosts": list(by_id[state.id].hosts) if state.id in by_id else [],
                    "mode": "shadow" if state.id in by_id and by_id[state.id].shadow else "enforce",
                }
                for state in snapshot.states
            ],
            "sourceErrors": dict(snapshot.source_errors),
            "conflicts": [
                {"host": c.host, "policies": list(c.policies)} for c in snapshot.index.conflicts
            ],
        }
        if self.resources.geoip is not None:
            out["geoip"] = self.resources.geoip.describe()
        if self.kubernetes is not None:
            out["kubernetes"] = self.kubernetes.describe()
            if self.status_writer is not None:
                out["kubernetes"]["status"] = self.status_writer.describe()
        return out

    async def stop(self) -> None:
        grace = self.settings.drain_seconds
        if self.grpc is not None:
            await self.grpc.stop(grace)
        for worker in self._workers:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM)
        for worker in self._workers:
            try:
                await asyncio.to_thread(worker.wait, grace + 5)
            except subprocess.TimeoutExpired:
                worker.kill()
        if self.admin is not None:
            await self.admin.stop()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()


async def run(settings: Settings) -> int:
    app = Application(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    # Everything loaded so far (protobuf descriptors, models, compiled policies)
    # lives as long as the process: keep it out of the cyclic collector's way so
    # each collection only walks what requests allocate.
    gc.collect()
    gc.freeze()
    log.info("abuse-sidecar ready (%d policies)", app.registry.current.loaded)
    await stop.wait()
    log.info("shutting down: draining in-flight checks")
    await app.stop()
    return 0


def serve(settings: Settings) -> int:
    try:
        import uvloop

        return uvloop.run(run(settings))
    except ImportError:
        return asyncio.run(run(settings))
