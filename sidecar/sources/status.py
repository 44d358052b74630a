"""AbusePolicy status, written by one replica at a time.

Every replica compiles and serves every policy; only the holder of a
``coordination.k8s.io/v1`` Lease writes ``status`` (the split Authorino uses), so N replicas
do not race N identical PATCHes per change. Each AbusePolicy gets ``status.observedGeneration``
and a ``Ready`` condition — ``True``/``Compiled``, or ``False``/``Invalid`` with the field path
in the message while the last good version keeps serving — written with a merge PATCH on the
``/status`` subresource only when it differs from what the object already carries.
``lastTransitionTime`` moves only when the condition's status does (metav1.Condition rules).

Leader election follows client-go's Lease lock: a follower takes the Lease when its holder
has not renewed it for ``leaseDurationSeconds`` of the follower's own clock (observed time,
so clock skew between nodes does not matter); the leader renews every ``retry_period`` and
stops writing when it could not renew for ``renew_deadline``; on shutdown it releases the
Lease so a successor takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from sidecar.compiled.snapshot import PolicyRegistry, PolicyState
from sidecar.sources.kubernetes import (
    GROUP,
    PLURAL,
    SOURCE_PREFIX,
    VERSION,
    Backoff,
    KubernetesApiError,
    KubernetesSource,
    PolicyObject,
)

log = logging.getLogger("sidecar.sources.status")

READY: Final = "Ready"
COMPILED: Final = "Compiled"
INVALID: Final = "Invalid"
MAX_MESSAGE: Final = 32768  # metav1.Condition.message limit
LEASE_PREFIX: Final = "abuse-sidecar-status"
_MERGE_PATCH: Final = "application/merge-patch+json"
_REQUEST_SECONDS: Final = 15.0


def _error_of(exc: Exception) -> KubernetesApiError:
    if isinstance(exc, ApiException):
        return KubernetesApiError.from_api_exception(exc)
    return KubernetesApiError(0, type(exc).__name__, str(exc) or type(exc).__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------
# What the status should say
# ------------------------------------------------------------------------------------------


def invalid_message(state: PolicyState) -> str | None:
    """The registry's error for a Kubernetes policy, as ``<field path>: <problem>``: the
    source prefix (``kubernetes:ns/name (document 0): ``) names the object the status is on."""
    if state.state != "invalid" or not state.error:
        return None
    prefix = f"{state.source} (document 0): "
    message = state.error[len(prefix) :] if state.error.startswith(prefix) else state.error
    if state.generation:
        message += f" (generation {state.generation} keeps serving)"
    return message[:MAX_MESSAGE]


def desired_status(obj: PolicyObject, error: str | None, now: datetime.datetime) -> dict[str, Any]:
    """``status`` for ``obj``: its other conditions kept, Ready set, in place."""
    status = "False" if error else "True"
    ready = {
        "type": READY,
        "status": status,
        "reason": INVALID if error else COMPILED,
        "message": error or "",
        "observedGeneration": obj.generation,
        "lastTransitionTime": _rfc3339(now),
    }
    conditions: list[Any] = []
    placed = False
    for condition in obj.status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == READY:
            if condition.get("status") == status and condition.get("lastTransitionTime"):
                ready["lastTransitionTime"] = condition["lastTransitionTime"]
            conditions.append(ready)
            placed = True
        else:
            conditions.append(condition)
    if not placed:
        conditions.append(ready)
    return {"observedGeneration": obj.generation, "conditions": conditions}


def already_says(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return all(current.get(key) == value for key, value in desired.items())


def _fingerprint(status: Mapping[str, Any]) -> str:
    """What a status says, without the clock: the same verdict computed a second later is
    the same write."""
    conditions = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, Mapping) else c
        for c in status.get("conditions") or []
    ]
    return json.dumps({**status, "conditions": conditions}, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------
# Leader election
# ------------------------------------------------------------------------------------------


def lease_name(namespaces: Sequence[str]) -> str:
    """One Lease per set of watched namespaces: releases watching different namespaces in
    the same namespace do not block each other; replicas of one release share it."""
    if not namespaces:
        return LEASE_PREFIX
    digest = hashlib.sha256(",".join(sorted(set(namespaces))).encode()).hexdigest()[:10]
    return f"{LEASE_PREFIX}-{digest}"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    duration_seconds: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @classmethod
    def from_environment(cls, namespaces: Sequence[str], fallback_namespace: str) -> LeaseSettings:
        """POD_NAME and POD_NAMESPACE come from the chart (downward API); outside a pod the
        identity is the host name and the Lease lives in the kubeconfig's namespace."""
        identity = os.environ.get("POD_NAME") or socket.gethostname()
        namespace = os.environ.get("POD_NAMESPACE") or fallback_namespace
        return cls(namespace=namespace, name=lease_name(namespaces), identity=identity)


class _Attempt(enum.Enum):
    HELD = "held"  # we hold the Lease (acquired or renewed)
    TAKEN = "taken"  # another holder's Lease has not expired
    FAILED = "failed"  # the API server could not be asked


class LeaderElector:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        settings: LeaseSettings,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._api = k8s.CoordinationV1Api(api_client)
        self.settings = settings
        self._on_change = on_change
        self.is_leader = False
        self.holder: str | None = None
        self.last_error: str | None = None
        self.transitions = 0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "lease": f"{s.namespace}/{s.name}",
            "identity": s.identity,
            "leader": self.is_leader,
            "holder": self.holder,
            "lastError": self.last_error,
        }

    async def run(self) -> None:
        s = self.settings
        while True:
            try:
                # A request that hangs must not keep a leader that cannot renew leading.
                async with asyncio.timeout(s.renew_deadline / 2):
                    attempt = await self._try_acquire_or_renew()
            except Exception as exc:  # a broken connection: the renew deadline decides
                attempt = self._failed(exc)
            now = time.monotonic()
            if attempt is _Attempt.HELD:
                self._renewed_at = now
                self._set_leader(True)
            elif attempt is _Attempt.TAKEN or now - self._renewed_at > s.renew_deadline:
                self._set_leader(False)
            await asyncio.sleep(s.retry_period)

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            log.info("%s leads: this replica writes AbusePolicy status", self.settings.identity)
        else:
            log.warning("%s no longer leads: status writes stop", self.settings.identity)
        if self._on_change is not None:
            self._on_change(leader)

    async def _try_acquire_or_renew(self) -> _Attempt:
        s = self.settings
        now = _now()
        try:
            lease = await self._api.read_namespaced_lease(s.name, s.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return self._failed(exc)
            return await self._create(now)
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity or ""
        self.holder = holder or None
        record = (holder, spec.renew_time, spec.lease_duration_seconds, spec.lease_transitions)
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        if holder and holder != s.identity:
            duration = spec.lease_duration_seconds or s.duration_seconds
            if time.monotonic() < self._observed_at + duration:
                return _Attempt.TAKEN
        transitions = spec.lease_transitions or 0
        ours = holder == s.identity
        lease.spec = k8s.V1LeaseSpec(
            holder_identity=s.identity,
            lease_duration_seconds=s.duration_seconds,
            acquire_time=spec.acquire_time if ours and spec.acquire_time else now,
            renew_time=now,
            lease_transitions=transitions if ours else transitions + 1,
        )
        try:
            await self._api.replace_namespaced_lease(s.name, s.namespace, lease)
        except ApiException as exc:
            # 409: someone wrote the Lease since we read it (a renewal or a takeover).
            return _Attempt.TAKEN if exc.status == 409 else self._failed(exc)
        if not ours:
            log.info("%s took the Lease %s/%s from %r", s.identity, s.namespace, s.name, holder)
        self.holder = s.identity
        self.transitions = lease.spec.lease_transitions or 0
        self.last_error = None
        return _Attempt.HELD

    async def _create(self, now: datetime.datetime) -> _Attempt:
        s = self.settings
        lease = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=s.name, namespace=s.namespace),
            spec=k8s.V1LeaseSpec(
                holder_identity=s.identity,
                lease_duration_seconds=s.duration_seconds,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            await self._api.create_namespaced_lease(s.namespace, lease)
        except ApiException as exc:
            return _Attempt.TAKEN if exc.status == 409 else self._failed(exc)
        self.holder = s.identity
        self.last_error = None
        return _Attempt.HELD

    def _failed(self, exc: Exception) -> _Attempt:
        error = _error_of(exc)
        self.last_error = str(error)
        log.warning("Lease %s/%s: %s", self.settings.namespace, self.settings.name, error)
        return _Attempt.FAILED

    async def release(self) -> None:
        """Hand the Lease over at shutdown: an empty holder lets a follower take it now."""
        if not self.is_leader:
            return
        self._set_leader(False)
        s = self.settings
        try:
            lease = await self._api.read_namespaced_lease(s.name, s.namespace)
            if lease.spec is None or lease.spec.holder_identity != s.identity:
                return
            now = _now()
            lease.spec = k8s.V1LeaseSpec(
                holder_identity=None,
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=lease.spec.lease_transitions,
            )
            await self._api.replace_namespaced_lease(s.name, s.namespace, lease)
            log.info("%s released the Lease %s/%s", s.identity, s.namespace, s.name)
        except Exception as exc:
            log.warning("releasing the Lease failed (it expires by itself): %s", _error_of(exc))


# ------------------------------------------------------------------------------------------
# The writer
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Written:
    """A PATCH sent for an object version, so it is not sent again before the watch shows it."""

    uid: str
    generation: int
    fingerprint: str
    based_on: str  # the resourceVersion the PATCH was computed from


class StatusWriter:
    def __init__(
        self,
        source: KubernetesSource,
        registry: PolicyRegistry,
        lease: LeaseSettings,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self._source = source
        self._registry = registry
        self.lease = lease
        self._backoff = Backoff(retry_initial, retry_max)
        self._dirty = asyncio.Event()
        self._written: dict[str, _Written] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.elector: LeaderElector | None = None
        self.writes = 0
        self.last_error: str | None = None
        source.subscribe(self._dirty.set)
        registry.subscribe(lambda _snapshot: self._dirty.set())

    @classmethod
    def for_source(cls, source: KubernetesSource, registry: PolicyRegistry) -> StatusWriter:
        fallback = source.connection.namespace if source.connection else "default"
        return cls(source, registry, LeaseSettings.from_environment(source.namespaces, fallback))

    @property
    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    async def start(self) -> None:
        if self._source.connection is None:
            raise RuntimeError("start the KubernetesSource before its StatusWriter")
        self.elector = LeaderElector(
            self._source.connection.api_client, self.lease, on_change=self._leadership_changed
        )
        self._tasks = [
            asyncio.create_task(self.elector.run(), name="status-lease"),
            asyncio.create_task(self._write_loop(), name="status-writer"),
        ]

    def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self._written.clear()  # another leader may have written meanwhile: look again
            self._dirty.set()

    def describe(self) -> dict[str, Any]:
        return {
            **(self.elector.describe() if self.elector else {"leader": False}),
            "statusWrites": self.writes,
            "lastStatusError": self.last_error,
        }

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self.is_leader:
                continue
            if await self.reconcile():
                self._backoff.reset()
            else:
                delay = self._backoff.next_delay()
                await asyncio.sleep(delay)
                self._dirty.set()

    async def reconcile(self) -> bool:
        """Write every status that differs; False if some write failed (retried later)."""
        states = {
            s.source: s for s in self._registry.current.states if s.source.startswith(SOURCE_PREFIX)
        }
        objects = self._source.policy_objects()
        live = {o.source_key for o in objects}
        for key in self._written.keys() - live:
            del self._written[key]
        ok = True
        for obj in objects:
            state = states.get(obj.source_key)
            if state is None or not self.is_leader:
                continue
            desired = desired_status(obj, invalid_message(state), _now())
            if already_says(obj.status, desired):
                continue
            written = _Written(obj.uid, obj.generation, _fingerprint(desired), obj.resource_version)
            if self._written.get(obj.source_key) == written:
                continue  # sent; the watch has not brought it back yet
            if await self._patch(obj, desired):
                self._written[obj.source_key] = written
            else:
                ok = False
        return ok

    async def _patch(self, obj: PolicyObject, status: dict[str, Any]) -> bool:
        connection = self._source.connection
        if connection is None:
            return False
        api = k8s.CustomObjectsApi(connection.api_client)
        try:
            await api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                obj.namespace,
                PLURAL,
                obj.name,
                {"status": status},
                _content_type=_MERGE_PATCH,
                _request_timeout=_REQUEST_SECONDS,
            )
        except Exception as exc:  # the API server or the connection: retried with backoff
            error = _error_of(exc)
            if error.status == 404:  # deleted meanwhile: its DELETED event is on the way
                return True
            self.last_error = f"{obj.namespace}/{obj.name}: {error}"
            log.warning("writing the status of AbusePolicy %s failed", self.last_error)
            return False
        self.writes += 1
        ready = status["conditions"]
        log.info(
            "AbusePolicy %s/%s generation %d: %s",
            obj.namespace,
            obj.name,
            obj.generation,
            next(c["reason"] for c in ready if isinstance(c, Mapping) and c.get("type") == READY),
        )
        return True

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.elector is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.elector.release(), 2.0)
