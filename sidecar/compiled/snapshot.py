"""PolicySnapshot and the registry that builds a new one on every change.

The registry is fed by sources (files, Kubernetes). Each source key (a file, a
Kubernetes object) owns the policies it last produced. A document that fails
keeps its policy's last good version serving and records the error; a new
immutable snapshot is swapped in with one attribute assignment, which the gRPC
handler reads once per Check without a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.compiled.compiler import compile_policy
from sidecar.compiled.hosts import BindingIndex
from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.resources import Resources
from sidecar.errors import PolicyError
from sidecar.model.loader import LoadedDocument
from sidecar.model.policy import AbusePolicy

log = logging.getLogger("sidecar.policies")


@dataclass(frozen=True, slots=True)
class PolicyState:
    id: str
    source: str
    state: str  # ready | invalid (serving its last good version, if any) | removed
    generation: int  # generation of the version serving now (0: none)
    observed_generation: int  # generation of the newest version seen
    error: str | None
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "state": self.state,
            "generation": self.generation,
            "observedGeneration": self.observed_generation,
            "lastError": self.error,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    version: int
    index: BindingIndex
    states: tuple[PolicyState, ...]
    source_errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def loaded(self) -> int:
        return len(self.index.by_id)


@dataclass(slots=True)
class _SourceEntry:
    policies: dict[str, CompiledPolicy] = field(default_factory=dict)
    errors: dict[str, PolicyError] = field(default_factory=dict)  # policy id -> error
    observed: dict[str, int] = field(default_factory=dict)
    source_error: str | None = None


Listener = Callable[[PolicySnapshot], None]


class PolicyRegistry:
    def __init__(self, resources: Resources, default_policy: str | None = None) -> None:
        self._resources = resources
        self._default = default_policy
        self._sources: dict[str, _SourceEntry] = {}
        self._service_hosts: dict[str, str] = {}
        self._version = 0
        self._listeners: list[Listener] = []
        self.current = PolicySnapshot(0, BindingIndex.build([], None, default_policy), ())
        self.initialised = False

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- inputs ----------------------------------------------------------------------

    def replace_source(
        self, key: str, documents: Iterable[LoadedDocument], *, publish: bool = True
    ) -> None:
        """Everything ``key`` (a file, a Kubernetes object) now says."""
        entry = self._sources.setdefault(key, _SourceEntry())
        fresh: dict[str, CompiledPolicy] = {}
        errors: dict[str, PolicyError] = {}
        observed: dict[str, int] = {}
        whole_source_error: str | None = None
        for doc in documents:
            if doc.policy is not None:
                pid = doc.policy.id
                observed[pid] = doc.policy.metadata.generation
                if pid in fresh or self._owned_elsewhere(pid, key):
                    errors[pid] = PolicyError(
                        doc.source,
                        doc.index,
                        "metadata.name",
                        f"policy {pid} is defined more than once",
                    )
                    continue
                try:
                    fresh[pid] = compile_policy(doc.policy, doc.source, self._resources)
                except PolicyError as err:
                    errors[pid] = PolicyError(err.source, doc.index, err.field_path, err.message)
            elif doc.error is not None:
                if doc.policy_id is not None:
                    errors[doc.policy_id] = doc.error
                else:
                    whole_source_error = str(doc.error)
        # A policy whose new version failed keeps serving its last good version.
        for pid, error in errors.items():
            log.error("policy rejected, keeping its last good version: %s", error)
            if pid not in fresh and pid in entry.policies:
                fresh[pid] = entry.policies[pid]
        if whole_source_error is not None:
            log.error(
                "policy source rejected, keeping its last good policies: %s", whole_source_error
            )
            for pid, policy in entry.policies.items():
                fresh.setdefault(pid, policy)
        entry.policies = fresh
        entry.errors = errors
        entry.observed = observed
        entry.source_error = whole_source_error
        if publish:
            self.publish()

    def remove_source(self, key: str, *, publish: bool = True) -> None:
        if self._sources.pop(key, None) is not None and publish:
            self.publish()

    def set_service_hosts(self, hosts: Mapping[str, str], *, publish: bool = True) -> None:
        """DNS names of annotated Services → the ``ns/name`` policy they name."""
        self._service_hosts = dict(hosts)
        if publish:
            self.publish()

    def validate(self, policy: AbusePolicy, source: str) -> CompiledPolicy:
        """Compile without publishing (``validate`` command, Kubernetes status)."""
        return compile_policy(policy, source, self._resources)

    # -- output ----------------------------------------------------------------------

    def _owned_elsewhere(self, pid: str, key: str) -> bool:
        return any(pid in e.policies for k, e in self._sources.items() if k != key)

    def publish(self) -> PolicySnapshot:
        now = time.time()
        policies: list[CompiledPolicy] = []
        states: list[PolicyState] = []
        source_errors: dict[str, str] = {}
        for key, entry in sorted(self._sources.items()):
            if entry.source_error:
                source_errors[key] = entry.source_error
            for pid in sorted(set(entry.policies) | set(entry.errors)):
                compiled = entry.policies.get(pid)
                error = entry.errors.get(pid)
                if compiled is not None:
                    policies.append(compiled)
                states.append(
                    PolicyState(
                        id=pid,
                        source=compiled.source if compiled else key,
                        state="invalid" if error else "ready",
                        generation=compiled.generation if compiled else 0,
                        observed_generation=entry.observed.get(
                            pid, compiled.generation if compiled else 0
                        ),
                        error=str(error) if error else None,
                        updated_at=now,
                    )
                )
        self._version += 1
        index = BindingIndex.build(policies, self._service_hosts, self._default)
        for conflict in index.conflicts:
            log.warning(
                "host %s is claimed by several policies %s; %s wins",
                conflict.host,
                ", ".join(conflict.policies),
                conflict.policies[0],
            )
        snapshot = PolicySnapshot(self._version, index, tuple(states), source_errors)
        self.current = snapshot
        self.initialised = True
        for listener in self._listeners:
            listener(snapshot)
        return snapshot
