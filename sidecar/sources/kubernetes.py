"""``serve --kubernetes``: AbusePolicies, annotated Services and API-key Secrets.

For each kind and each watched namespace (or the whole cluster) one reflector lists, then
watches from the list's resourceVersion, the way client-go's Reflector does: it asks for
BOOKMARKs so an idle watch still advances its resourceVersion, resumes from the last
resourceVersion it applied when a connection drops or the server ends the watch, and relists
only on 410 Gone. A relist is applied as one replacement (objects missing from the list are
deletions) and published once, so no request ever sees half of it. Errors back off
exponentially with jitter; the last good state keeps serving meanwhile.

What each kind feeds:

* AbusePolicy ``ns/name`` → the policy registry, one source key per object; a version that
  fails keeps the last good one serving (the registry's rule) and the status writer
  (``sidecar/sources/status.py``) reports it.
* Service with annotation ``abuse.sidecar.dev/policy: <name>`` → its DNS names ``svc``,
  ``svc.ns``, ``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` bound to ``ns/<name>``.
  Services cannot be selected by annotation on the server, so all are watched and filtered
  here.
* Secret labelled ``abuse.sidecar.dev/api-key: "true"`` → the process-wide
  ``SecretKeyTable``: ``data.api_key`` is hashed as it is read, only the digest is kept.

The ``kubernetes`` client is imported here and in ``status.py`` only; its exceptions become
:class:`KubernetesApiError` at this boundary.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio import watch as k8s_watch
from kubernetes.aio.client.exceptions import ApiException

from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.errors import ConfigurationError, PolicyError, SidecarError
from sidecar.identity.api_keys import MAX_API_KEY_CHARS, SecretApiKey, SecretKeyTable
from sidecar.model.loader import LoadedDocument, parse_document

log = logging.getLogger("sidecar.sources.kubernetes")

GROUP: Final = "abuse.sidecar.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "abusepolicies"
POLICY_ANNOTATION: Final = "abuse.sidecar.dev/policy"
API_KEY_LABEL: Final = "abuse.sidecar.dev/api-key"
API_KEY_SELECTOR: Final = f"{API_KEY_LABEL}=true"
SUBJECT_ANNOTATION: Final = "abuse.sidecar.dev/subject"
PLAN_ANNOTATION: Final = "abuse.sidecar.dev/plan"
API_KEY_DATA: Final = "api_key"
CLUSTER_DOMAIN: Final = "cluster.local"
SOURCE_PREFIX: Final = "kubernetes:"
_SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# What a policy name (and so the annotation value) may be: a DNS-1123 subdomain.
_POLICY_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

Json = dict[str, Any]
ObjectRef = tuple[str, str]  # (namespace, name)


def policy_source_key(namespace: str, name: str) -> str:
    """The registry source key (and ``source`` in ``/policies``) of an AbusePolicy object."""
    return f"{SOURCE_PREFIX}{namespace}/{name}"


class KubernetesApiError(SidecarError):
    """The API server refused or failed a request (a ``v1 Status``), or the connection broke."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float = 0.0) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{status} {reason}: {message}" if status else message)

    @classmethod
    def from_api_exception(cls, exc: ApiException) -> KubernetesApiError:
        status = int(exc.status or 0)
        reason, message = str(exc.reason or ""), ""
        body = exc.body
        if body:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                decoded = json.loads(body)
                reason = str(decoded.get("reason") or reason)
                message = str(decoded.get("message") or "")
        if not message and ": " in reason:  # watch ERROR events: "Expired: too old resource..."
            reason, message = reason.split(": ", 1)
        retry = (exc.headers or {}).get("Retry-After") if exc.headers else None
        return cls(status, reason, message or reason, _seconds(retry))


def _seconds(value: object) -> float:
    try:
        return max(0.0, float(str(value)))
    except ValueError:
        return 0.0


# ------------------------------------------------------------------------------------------
# Connection
# ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class KubeConnection:
    api_client: k8s.ApiClient
    namespace: str
    """The namespace of the kubeconfig context or of the pod's service account."""

    async def aclose(self) -> None:
        await self.api_client.close()  # type: ignore[no-untyped-call]


async def connect(kubeconfig: str | None = None, *, pool_size: int = 32) -> KubeConnection:
    """``kubeconfig`` or ``KUBECONFIG`` when set, else the in-cluster service account, else
    ``~/.kube/config``. Raises ConfigurationError naming what was tried."""
    configuration = k8s.Configuration()
    # Every watch holds a connection for minutes; lists, status and the Lease need more.
    configuration.connection_pool_maxsize = pool_size
    path = kubeconfig or os.environ.get("KUBECONFIG")
    default_file = Path.home() / ".kube" / "config"
    namespace = "default"
    try:
        if not path and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            with contextlib.suppress(OSError):
                namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or namespace
        else:
            if not path and not default_file.is_file():
                raise ConfigurationError(
                    "--kubernetes: no cluster credentials: not in a pod (KUBERNETES_SERVICE_HOST "
                    f"unset), KUBECONFIG unset and {default_file} missing"
                )
            loader = await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path or str(default_file),
                client_configuration=configuration,
                persist_config=False,
            )
            context = (loader.current_context or {}).get("context") or {}
            namespace = str(context.get("namespace") or namespace)
    except k8s_config.ConfigException as exc:
        raise ConfigurationError(f"--kubernetes: cannot load cluster credentials: {exc}") from exc
    return KubeConnection(k8s.ApiClient(configuration), namespace)


# ------------------------------------------------------------------------------------------
# Timing and backoff
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchTiming:
    watch_seconds: int = 300
    """Server-side watch timeout; each watch draws from [1x, 2x) so replicas spread out."""
    page_size: int = 500
    list_timeout: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class Backoff:
    """Exponential backoff with jitter: the n-th delay is drawn from [d/2, d], d = initial·2ⁿ
    capped, so replicas that failed together do not retry together."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._attempt = 0

    def next_delay(self, at_least: float = 0.0) -> float:
        ceiling = min(self._cap, self._initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return max(at_least, random.uniform(ceiling / 2, ceiling))  # noqa: S311 - jitter

    def reset(self) -> None:
        self._attempt = 0


# ------------------------------------------------------------------------------------------
# The three kinds
# ------------------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _ref(obj: Mapping[str, Any]) -> ObjectRef:
    meta = _meta(obj)
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _in_scope(ref: ObjectRef, namespace: str | None) -> bool:
    return namespace is None or ref[0] == namespace


def _int(value: object) -> int:
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A list/watch call of the official client: a bound API method and its arguments."""

    method: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


class Kind(Protocol):
    plural: str

    def endpoint(self, apis: Apis, namespace: str | None) -> Endpoint: ...

    def replace(self, namespace: str | None, objects: Sequence[Json]) -> bool:
        """A full list of one scope; True when the policy registry must republish."""

    def apply(self, event: str, obj: Json) -> bool:
        """One ADDED/MODIFIED/DELETED event; True when the registry must republish."""


@dataclass(frozen=True, slots=True)
class Apis:
    custom: k8s.CustomObjectsApi
    core: k8s.CoreV1Api


@dataclass(frozen=True, slots=True)
class PolicyObject:
    """What the status writer needs of one AbusePolicy as last seen."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    status: Mapping[str, Any]

    @property
    def source_key(self) -> str:
        return policy_source_key(self.namespace, self.name)


class PolicyKind:
    plural = PLURAL

    def __init__(self, registry: PolicyRegistry) -> None:
        self._registry = registry
        self.objects: dict[ObjectRef, PolicyObject] = {}
        self._specs: dict[ObjectRef, Any] = {}  # last compiled spec: status writes skip recompiling

    def endpoint(self, apis: Apis, namespace: str | None) -> Endpoint:
        if namespace is None:
            return Endpoint(apis.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL))
        return Endpoint(
            apis.custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL)
        )

    def replace(self, namespace: str | None, objects: Sequence[Json]) -> bool:
        listed = {_ref(obj) for obj in objects}
        changed = False
        for ref in [r for r in self.objects if _in_scope(r, namespace) and r not in listed]:
            self._forget(ref)
            changed = True
        for obj in objects:
            changed = self._upsert(obj) or changed
        return changed

    def apply(self, event: str, obj: Json) -> bool:
        if event == "DELETED":
            ref = _ref(obj)
            if ref not in self.objects:
                return False
            self._forget(ref)
            return True
        return self._upsert(obj)

    def _forget(self, ref: ObjectRef) -> None:
        del self.objects[ref]
        self._specs.pop(ref, None)
        self._registry.remove_source(policy_source_key(*ref), publish=False)

    def _upsert(self, obj: Json) -> bool:
        ref = _ref(obj)
        meta = _meta(obj)
        status = obj.get("status")
        record = PolicyObject(
            namespace=ref[0],
            name=ref[1],
            uid=str(meta.get("uid") or ""),
            generation=_int(meta.get("generation")),
            resource_version=str(meta.get("resourceVersion") or ""),
            status=status if isinstance(status, Mapping) else {},
        )
        previous = self.objects.get(ref)
        self.objects[ref] = record
        spec = obj.get("spec")
        if (
            previous is not None
            and previous.uid == record.uid
            and previous.generation == record.generation
            and self._specs.get(ref) == spec
        ):
            return False  # a status or metadata write: nothing to compile
        self._specs[ref] = spec
        source = policy_source_key(*ref)
        self._registry.replace_source(source, [self._document(source, ref, obj)], publish=False)
        return True

    @staticmethod
    def _document(source: str, ref: ObjectRef, obj: Json) -> LoadedDocument:
        data = dict(obj)
        # List items of custom resources carry these; be lenient with servers that omit them.
        data.setdefault("apiVersion", f"{GROUP}/{VERSION}")
        data.setdefault("kind", "AbusePolicy")
        try:
            return LoadedDocument(source, 0, parse_document(data, source, 0), None)
        except PolicyError as err:
            return LoadedDocument(source, 0, None, err, f"{ref[0]}/{ref[1]}")


class ServiceKind:
    plural = "services"

    def __init__(self) -> None:
        self.bindings: dict[ObjectRef, str] = {}  # Service → the policy name it names
        self.errors: dict[ObjectRef, str] = {}
        self.hosts: dict[str, str] = {}
        self.conflicts: dict[str, list[str]] = {}

    def endpoint(self, apis: Apis, namespace: str | None) -> Endpoint:
        if namespace is None:
            return Endpoint(apis.core.list_service_for_all_namespaces)
        return Endpoint(apis.core.list_namespaced_service, (namespace,))

    def replace(self, namespace: str | None, objects: Sequence[Json]) -> bool:
        for ref in [r for r in self.bindings if _in_scope(r, namespace)]:
            del self.bindings[ref]
        for ref in [r for r in self.errors if _in_scope(r, namespace)]:
            del self.errors[ref]
        for obj in objects:
            self._upsert(obj)
        return self._rebuild()

    def apply(self, event: str, obj: Json) -> bool:
        ref = _ref(obj)
        before = self.bindings.get(ref)
        if event == "DELETED":
            self.bindings.pop(ref, None)
            self.errors.pop(ref, None)
        else:
            self._upsert(obj)
        # Most Services carry no annotation: their events change nothing.
        return self.bindings.get(ref) != before and self._rebuild()

    def _upsert(self, obj: Json) -> None:
        ref = _ref(obj)
        value = _string_map(_meta(obj).get("annotations")).get(POLICY_ANNOTATION)
        self.bindings.pop(ref, None)
        self.errors.pop(ref, None)
        if value is None:
            return
        name = value.strip()
        if len(name) > 253 or not _POLICY_NAME.match(name):
            self.errors[ref] = (
                f"annotation {POLICY_ANNOTATION}={value!r} is not a policy name (a policy of the "
                "Service's own namespace, lower-case DNS name)"
            )
            log.warning("Service %s/%s: %s", ref[0], ref[1], self.errors[ref])
            return
        self.bindings[ref] = name

    def _rebuild(self) -> bool:
        hosts: dict[str, str] = {}
        claims: dict[str, list[str]] = {}
        for (namespace, name), policy in sorted(self.bindings.items()):
            target = f"{namespace}/{policy}"
            for dns in (
                name,
                f"{name}.{namespace}",
                f"{name}.{namespace}.svc",
                f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}",
            ):
                # Only the bare name can collide (same Service name in two namespaces):
                # the first namespace in sort order keeps it, deterministically.
                hosts.setdefault(dns, target)
                claims.setdefault(dns, []).append(f"{namespace}/{name}")
        conflicts = {host: owners for host, owners in claims.items() if len(owners) > 1}
        for host in conflicts.keys() - self.conflicts.keys():
            log.warning(
                "Service name %s is annotated in several namespaces %s; %s keeps the bare name",
                host,
                ", ".join(conflicts[host]),
                conflicts[host][0],
            )
        self.conflicts = conflicts
        if hosts == self.hosts:
            return False
        self.hosts = hosts
        return True


class SecretKind:
    plural = "secrets"

    def __init__(self, table: SecretKeyTable) -> None:
        self._table = table
        self.keys: dict[ObjectRef, SecretApiKey] = {}
        self.errors: dict[ObjectRef, str] = {}

    def endpoint(self, apis: Apis, namespace: str | None) -> Endpoint:
        selector = {"label_selector": API_KEY_SELECTOR}
        if namespace is None:
            return Endpoint(apis.core.list_secret_for_all_namespaces, (), selector)
        return Endpoint(apis.core.list_namespaced_secret, (namespace,), selector)

    def replace(self, namespace: str | None, objects: Sequence[Json]) -> bool:
        for ref in [r for r in self.keys if _in_scope(r, namespace)]:
            del self.keys[ref]
        for ref in [r for r in self.errors if _in_scope(r, namespace)]:
            del self.errors[ref]
        for obj in objects:
            self._read(obj)
        self._table.replace(self.keys)
        return False  # the table is read live by compiled policies: nothing to republish

    def apply(self, event: str, obj: Json) -> bool:
        ref = _ref(obj)
        if event == "DELETED":  # deleted, or its label removed (it left the selection)
            self.keys.pop(ref, None)
            self.errors.pop(ref, None)
            self._table.remove(*ref)
            return False
        key = self._read(obj)
        if key is None:
            self._table.remove(*ref)
        else:
            self._table.put(ref[0], ref[1], key)
        return False

    def _read(self, obj: Json) -> SecretApiKey | None:
        """Hash the Secret's key. A Secret that became unusable stops its old key too:
        a rotation meant to revoke a leaked key must not leave it accepted."""
        ref = _ref(obj)
        meta = _meta(obj)
        self.keys.pop(ref, None)
        self.errors.pop(ref, None)
        labels = _string_map(meta.get("labels"))
        if labels.get(API_KEY_LABEL) != "true":
            return None
        try:
            key = self._key_of(obj, ref, labels, _string_map(meta.get("annotations")))
        except ValueError as exc:
            self.errors[ref] = str(exc)
            log.error("API-key Secret %s/%s ignored: %s", ref[0], ref[1], exc)
            return None
        self.keys[ref] = key
        return key

    @staticmethod
    def _key_of(
        obj: Json, ref: ObjectRef, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> SecretApiKey:
        data = obj.get("data")
        encoded = data.get(API_KEY_DATA) if isinstance(data, Mapping) else None
        if not isinstance(encoded, str) or not encoded:
            raise ValueError(f"no data.{API_KEY_DATA}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"data.{API_KEY_DATA} is not base64") from None
        if not raw:
            raise ValueError(f"data.{API_KEY_DATA} is empty")
        if len(raw) > MAX_API_KEY_CHARS:
            raise ValueError(f"data.{API_KEY_DATA} is longer than {MAX_API_KEY_CHARS} bytes")
        subject = annotations.get(SUBJECT_ANNOTATION) or ref[1]
        plan = annotations.get(PLAN_ANNOTATION) or None
        return SecretApiKey.from_key(raw, subject, plan, labels)


# ------------------------------------------------------------------------------------------
# Reflector: list, then watch, forever
# ------------------------------------------------------------------------------------------


class _Expired(Exception):
    """410 Gone: the resourceVersion is older than the server's history; relist."""


def _item_count_note(count: int) -> str:
    return f"{count} object{'s' if count != 1 else ''}"


class Reflector:
    def __init__(
        self,
        kind: Kind,
        namespace: str | None,
        apis: Apis,
        timing: WatchTiming,
        on_change: Callable[[Kind, bool], None],
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self._apis = apis
        self._timing = timing
        self._on_change = on_change
        self.resource_version: str | None = None
        self.listed = False
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.bookmarks = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    @property
    def scope(self) -> str:
        return f"{self.kind.plural} in {self.namespace or 'all namespaces'}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.plural,
            "namespace": self.namespace or "*",
            "listed": self.listed,
            "resourceVersion": self.resource_version,
            "lists": self.lists,
            "watches": self.watches,
            "events": self.events,
            "bookmarks": self.bookmarks,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
        }

    async def run(self) -> None:
        backoff = Backoff(self._timing.backoff_initial, self._timing.backoff_max)
        expired_in_a_row = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    backoff.reset()
                started = time.monotonic()
                delivered = await self._watch()
                expired_in_a_row = 0
                if delivered or time.monotonic() - started > 1.0:
                    backoff.reset()
                    continue
                # A server that ends watches at once would otherwise be hammered.
                await asyncio.sleep(backoff.next_delay())
            except _Expired as exc:
                self.resource_version = None
                expired_in_a_row += 1
                log.info("%s: %s; relisting", self.scope, exc)
                if expired_in_a_row > 1:
                    await asyncio.sleep(backoff.next_delay())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is retried: keep serving the last state
                error = self._error_of(exc)
                self.last_error = str(error)
                self.last_error_at = time.time()
                delay = backoff.next_delay(error.retry_after)
                log.warning("%s: %s; retrying in %.1fs", self.scope, error, delay)
                await asyncio.sleep(delay)

    @staticmethod
    def _error_of(exc: Exception) -> KubernetesApiError:
        if isinstance(exc, KubernetesApiError):
            return exc
        if isinstance(exc, ApiException):
            return KubernetesApiError.from_api_exception(exc)
        if isinstance(exc, TimeoutError):
            return KubernetesApiError(0, "Timeout", "the API server did not answer in time")
        return KubernetesApiError(0, type(exc).__name__, str(exc) or type(exc).__name__)

    async def _list(self) -> None:
        """Every page first, then one replacement: a failed page applies nothing."""
        endpoint = self.kind.endpoint(self._apis, self.namespace)
        raw = getattr(
            endpoint.method.__self__, f"{endpoint.method.__name__}_without_preload_content"
        )
        items: list[Json] = []
        list_rv: str | None = None
        token: str | None = None
        while True:
            response = await raw(
                *endpoint.args,
                limit=self._timing.page_size,
                _continue=token,
                _request_timeout=self._timing.list_timeout,
                **endpoint.kwargs,
            )
            page = await _read_json(response)
            meta = page.get("metadata") or {}
            if list_rv is None:
                list_rv = str(meta.get("resourceVersion") or "")
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            token = meta.get("continue") or None
            if not token:
                break
        self.lists += 1
        if not self.listed:
            log.info("%s: listed %s", self.scope, _item_count_note(len(items)))
        republish = self.kind.replace(self.namespace, items)
        self.resource_version = list_rv
        self.listed = True
        self.last_error = None
        self._on_change(self.kind, republish)

    async def _watch(self) -> bool:
        """One watch request until the server ends it; True if it delivered anything."""
        timeout = int(self._timing.watch_seconds * random.uniform(1.0, 2.0))  # noqa: S311
        endpoint = self.kind.endpoint(self._apis, self.namespace)
        watcher = k8s_watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
        delivered = False
        self.watches += 1
        try:
            stream = watcher.stream(  # type: ignore[no-untyped-call]
                endpoint.method,
                *endpoint.args,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=float(timeout + 30),
                **endpoint.kwargs,
            )
            async for event in stream:
                self._on_event(event)
                delivered = True
        except ApiException as exc:
            error = KubernetesApiError.from_api_exception(exc)
            if error.status == 410:
                raise _Expired(str(error)) from None
            raise error from None
        finally:
            await watcher.close()  # type: ignore[no-untyped-call]
        return delivered

    def _on_event(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type"))
        obj = event.get("raw_object")
        if not isinstance(obj, dict):
            raise KubernetesApiError(0, "BadEvent", f"watch event {kind} without an object")
        rv = _meta(obj).get("resourceVersion")
        if kind == "BOOKMARK":
            self.bookmarks += 1
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            self.events += 1
            self._on_change(self.kind, self.kind.apply(kind, obj))
        else:
            log.warning("%s: ignoring watch event of type %s", self.scope, kind)
            return
        # Only after the event is applied: a resume from here can never skip it.
        if rv:
            self.resource_version = str(rv)


async def _read_json(response: aiohttp.ClientResponse) -> Json:
    try:
        body = await response.read()
    finally:
        response.release()
    if response.status >= 400:
        reason, message = response.reason or "", body.decode("utf-8", "replace")[:500]
        with contextlib.suppress(ValueError, AttributeError):
            status = json.loads(body)
            reason, message = str(status.get("reason") or reason), str(status.get("message"))
        error = KubernetesApiError(
            response.status, reason, message, _seconds(response.headers.get("Retry-After"))
        )
        if response.status == 410:
            raise _Expired(str(error))
        raise error
    decoded = json.loads(body)
    if not isinstance(decoded, dict):
        raise KubernetesApiError(response.status, "BadResponse", "a list that is not an object")
    return decoded


# ------------------------------------------------------------------------------------------
# The source
# ------------------------------------------------------------------------------------------


class KubernetesSource:
    """Feeds the registry and the Secret key table from the cluster.

    ``start()`` connects and starts one reflector per kind and namespace (``namespaces``
    empty: one cluster-wide reflector per kind); ``synced`` turns true once every reflector
    has applied its first full list.
    """

    def __init__(
        self,
        registry: PolicyRegistry,
        secret_keys: SecretKeyTable,
        namespaces: Sequence[str] = (),
        *,
        kubeconfig: str | None = None,
        timing: WatchTiming | None = None,
    ) -> None:
        self._registry = registry
        self.policies = PolicyKind(registry)
        self.services = ServiceKind()
        self.secrets = SecretKind(secret_keys)
        self.namespaces: tuple[str, ...] = tuple(dict.fromkeys(namespaces))
        self._kubeconfig = kubeconfig
        self._timing = timing or WatchTiming()
        self._listeners: list[Callable[[], None]] = []
        self.reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._synced = asyncio.Event()
        self.connection: KubeConnection | None = None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Called after every applied AbusePolicy change (status-only ones too)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self.connection = await connect(self._kubeconfig, pool_size=16 + 3 * len(self.scopes))
        apis = Apis(
            k8s.CustomObjectsApi(self.connection.api_client),
            k8s.CoreV1Api(self.connection.api_client),
        )
        kinds: tuple[Kind, ...] = (self.policies, self.services, self.secrets)
        self.reflectors = [
            Reflector(kind, namespace, apis, self._timing, self._changed)
            for kind in kinds
            for namespace in self.scopes
        ]
        for reflector in self.reflectors:
            name = f"kubernetes-{reflector.kind.plural}-{reflector.namespace or 'all'}"
            self._tasks.append(asyncio.create_task(reflector.run(), name=name))
        log.info("watching %s", ", ".join(r.scope for r in self.reflectors))

    @property
    def scopes(self) -> tuple[str | None, ...]:
        return self.namespaces or (None,)

    async def wait_synced(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._synced.wait()
        return self.synced

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def _changed(self, kind: Kind, republish: bool) -> None:
        if republish:
            if kind is self.services:
                self._registry.set_service_hosts(self.services.hosts, publish=False)
            self._registry.publish()
        if not self._synced.is_set() and all(r.listed for r in self.reflectors):
            self._synced.set()
            log.info("kubernetes: first list of every kind applied")
        if kind is self.policies:
            for listener in self._listeners:
                listener()

    def policy_objects(self) -> list[PolicyObject]:
        return list(self.policies.objects.values())

    def unready_reasons(self) -> list[str]:
        return [
            f"kubernetes: {r.scope} not listed yet"
            + (f" (last error: {r.last_error})" if r.last_error else "")
            for r in self.reflectors
            if not r.listed
        ] or ([] if self.reflectors else ["kubernetes: not started"])

    def describe(self) -> dict[str, Any]:
        return {
            "namespaces": list(self.namespaces) or ["*"],
            "synced": self.synced,
            "watches": [r.describe() for r in self.reflectors],
            "serviceBindings": {
                f"{ns}/{name}": f"{ns}/{policy}"
                for (ns, name), policy in sorted(self.services.bindings.items())
            },
            "serviceNameConflicts": dict(sorted(self.services.conflicts.items())),
            "apiKeySecrets": len(self.secrets.keys),
            "errors": {
                **{f"Service {ns}/{n}": e for (ns, n), e in sorted(self.services.errors.items())},
                **{f"Secret {ns}/{n}": e for (ns, n), e in sorted(self.secrets.errors.items())},
            },
        }

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.connection is not None:
            await self.connection.aclose()
            self.connection = None
