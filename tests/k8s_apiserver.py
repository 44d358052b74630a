"""A small Kubernetes API server for tests that speaks the real list/watch protocol.

Why our own: ``kmock`` (the HTTP stand-in kopf's tests use) was evaluated first. Version 0.8
returns a literal ``"..."`` as every list's resourceVersion, keeps no event history (so a watch
cannot resume from a resourceVersion and never answers 410 Gone), sends no BOOKMARK, ignores
``limit``/``continue``, ``labelSelector``, ``timeoutSeconds`` and the status subresource. Those
are exactly the paths the product's watcher lives on, so this module implements them to the
behaviour recorded on a real kube-apiserver v1.36 (shared/testdata/k8s/, KUBERNETES.md §2.3).

What it serves (HTTP/1.1, optional TLS; bearer tokens; optional RBAC):

* AbusePolicies from the CRD given (``apis/<group>/<version>/[namespaces/<ns>/]<plural>``,
  status subresource, schema validation with defaults and pruning, printer-column Tables),
  core/v1 Services, Secrets, Namespaces and Events, coordination.k8s.io/v1 Leases, and
  rbac.authorization.k8s.io/v1 Roles, RoleBindings, ClusterRoles and ClusterRoleBindings.
* list: ``labelSelector`` (equality and set-based), ``fieldSelector`` on metadata.name /
  metadata.namespace (400 otherwise), ``limit`` + ``continue`` (every page carries the first
  page's resourceVersion), ``resourceVersion`` / ``resourceVersionMatch``.
* watch: chunked JSON lines; synthetic ADDED for RV unset/"0" followed by the
  ``k8s.io/initial-events-end`` BOOKMARK; resume after RV N; selector entry/exit as
  ADDED/DELETED; BOOKMARK shortly before ``timeoutSeconds`` ends (and on demand); HTTP 200 +
  ERROR 410 for an RV older than the retained history; clean end at the deadline.
* writes: POST/PUT/DELETE, PATCH as merge, JSON-patch, strategic merge (built-ins only; 415
  on custom resources) and server-side apply; resourceVersion preconditions (409);
  ``generation`` bumps only on changes outside metadata and status.

Test hooks on :class:`KubeApiServer`: :meth:`~KubeApiServer.compact`,
:meth:`~KubeApiServer.restart`, :meth:`~KubeApiServer.drop_watches`,
:meth:`~KubeApiServer.send_bookmarks`, :meth:`~KubeApiServer.inject`,
:meth:`~KubeApiServer.wait_for_watches`, direct writes (:meth:`~KubeApiServer.create`,
:meth:`~KubeApiServer.update` with ``validate=False``, :meth:`~KubeApiServer.delete`), and
the request log :attr:`~KubeApiServer.requests` / :meth:`~KubeApiServer.requests_to`.

Typical use in a watcher test::

    with KubeApiServer(load_crd(CRD_PATH), bookmark_lead=0.3) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        start_the_watcher()                        # lists, then watches from the list RV
        api.wait_for_watches("abusepolicies")
        api.create(policy)                         # ADDED reaches the watcher
        api.drop_watches()                         # connection cut: it must resume from its RV
        api.compact(); api.drop_watches()          # its RV is now too old: 410, it must relist
        api.requests_to("abusepolicies", "PATCH")  # what it wrote to /status, with which type
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import email.message
import ipaddress
import json
import queue
import re
import secrets
import select
import socket
import ssl
import string
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

from tests.self_signed import self_signed_pem

Json = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]

ADMIN_TOKEN: Final = "admin-token"
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"
# Bodies above this size go out chunked, below it with Content-Length, as the real server does.
_CHUNK: Final = 2048
_MERGE_PATCH: Final = "application/merge-patch+json"
_JSON_PATCH: Final = "application/json-patch+json"
_STRATEGIC: Final = "application/strategic-merge-patch+json"
_APPLY: Final = "application/apply-patch+yaml"


# --------------------------------------------------------------------------------------------
# Errors: every API error is a v1 Status
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    reason: str
    message: str
    field: str

    def as_json(self) -> Json:
        return {"reason": self.reason, "message": self.message, "field": self.field}


class ApiError(Exception):
    """An error answered as a ``v1 Status`` with the given HTTP code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        /,
        details: Json | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        metadata: Json | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = tuple(headers)
        self.metadata = metadata or {}

    def status(self) -> Json:
        body: Json = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.metadata,
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


class PageNotFound(Exception):
    """A path no API group serves: the real server answers text/plain, not a Status."""


def _details(
    name: str | None = None,
    /,
    group: str = "",
    kind: str | None = None,
    uid: str | None = None,
    *,
    causes: Sequence[Cause] = (),
    retry_after: int | None = None,
) -> Json:
    details: Json = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    if uid:
        details["uid"] = uid
    if causes:
        details["causes"] = [c.as_json() for c in causes]
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    return details


_DEFAULT_REASONS: Final[Mapping[int, str]] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _generic_invalid() -> ApiError:
    return ApiError(
        422, "Invalid", "the server rejected our request due to an error in our request", {}
    )


# --------------------------------------------------------------------------------------------
# Resource types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    custom: bool = False
    top_order: tuple[str, ...] = ("kind", "apiVersion", "metadata", "spec", "status")
    field_labels: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})
    # Lists merged by key under strategic merge / apply: dotted path -> merge key.
    merge_keys: tuple[tuple[str, str], ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``abusepolicies.abuse.sidecar.dev`` / ``secrets``: how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"

    @property
    def tracks_generation(self) -> bool:
        return self.custom


_SERVICES = ResourceType(
    "",
    "v1",
    "services",
    "Service",
    status_subresource=True,
    merge_keys=(("spec.ports", "port"),),
)
_SECRETS = ResourceType(
    "",
    "v1",
    "secrets",
    "Secret",
    top_order=("kind", "apiVersion", "metadata", "immutable", "data", "type"),
    field_labels=frozenset({"metadata.name", "metadata.namespace", "type"}),
)
_NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False)
_EVENTS = ResourceType("", "v1", "events", "Event", top_order=("kind", "apiVersion", "metadata"))
_LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
_RBAC = "rbac.authorization.k8s.io"
_ROLES = ResourceType(
    _RBAC, "v1", "roles", "Role", top_order=("kind", "apiVersion", "metadata", "rules")
)
_ROLE_BINDINGS = ResourceType(
    _RBAC,
    "v1",
    "rolebindings",
    "RoleBinding",
    top_order=("kind", "apiVersion", "metadata", "subjects", "roleRef"),
)
_CLUSTER_ROLES = ResourceType(
    _RBAC,
    "v1",
    "clusterroles",
    "ClusterRole",
    namespaced=False,
    top_order=("kind", "apiVersion", "metadata", "rules"),
)
_CLUSTER_ROLE_BINDINGS = ResourceType(
    _RBAC,
    "v1",
    "clusterrolebindings",
    "ClusterRoleBinding",
    namespaced=False,
    top_order=("kind", "apiVersion", "metadata", "subjects", "roleRef"),
)
BUILTIN_TYPES: Final = (
    _SERVICES,
    _SECRETS,
    _NAMESPACES,
    _EVENTS,
    _LEASES,
    _ROLES,
    _ROLE_BINDINGS,
    _CLUSTER_ROLES,
    _CLUSTER_ROLE_BINDINGS,
)

_METADATA_ORDER: Final = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


@dataclass(frozen=True)
class CustomResource:
    """One served version of a CustomResourceDefinition."""

    type: ResourceType
    schema: CrdSchema | None
    printer_columns: tuple[Json, ...]


def custom_resources(crd: Mapping[str, Any]) -> list[CustomResource]:
    spec = crd["spec"]
    names = spec["names"]
    served: list[CustomResource] = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        rtype = ResourceType(
            spec["group"],
            version["name"],
            names["plural"],
            names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            status_subresource="status" in (version.get("subresources") or {}),
            custom=True,
        )
        served.append(
            CustomResource(
                rtype,
                CrdSchema(schema) if schema else None,
                tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    return served


def load_crd(path: Path) -> Json:
    """The first CustomResourceDefinition document in a YAML file."""
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            return doc
    raise ValueError(f"{path}: no CustomResourceDefinition document")


# --------------------------------------------------------------------------------------------
# Small helpers: time, rendering, paths into objects
# --------------------------------------------------------------------------------------------


def _now_seconds() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_time(value: Any) -> Any:
    """MicroTime as the server stores it: UTC, six fractional digits, ``Z``."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sorted_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_deep(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_deep(v) for v in value]
    return value


def _ordered(obj: Mapping[str, Any], order: Sequence[str]) -> Json:
    out: Json = {k: obj[k] for k in order if k in obj}
    out.update({k: obj[k] for k in obj if k not in out})
    return out


def render(rtype: ResourceType, obj: Mapping[str, Any]) -> Json:
    """The object as the real server encodes it: custom resources are unstructured maps (keys
    sorted); built-ins follow their Go struct order, with maps (labels, data) sorted."""
    if rtype.custom:
        result: Json = _sorted_deep(obj)
        return result
    meta = dict(obj.get("metadata") or {})
    for key in ("labels", "annotations"):
        if key in meta:
            meta[key] = dict(sorted(meta[key].items()))
    out = _ordered({**obj, "metadata": _ordered(meta, _METADATA_ORDER)}, rtype.top_order)
    if "data" in out and isinstance(out["data"], dict):
        out["data"] = dict(sorted(out["data"].items()))
    return out


def encode(body: Any) -> bytes:
    return (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def _meta(obj: Mapping[str, Any]) -> Json:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _meta(obj)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_SELECTOR_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|[^\s=!(),]+)")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Literal["=", "!=", "in", "notin", "exists", "!"]
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """The apimachinery selector grammar; errors carry its messages (400 BadRequest)."""
        tokens: list[str] = [t for t in _SELECTOR_TOKEN.findall(text) if t]
        if "".join(tokens) != re.sub(r"\s+", "", text):
            raise bad_request(f"unable to parse requirement: invalid selector {text!r}")
        reqs: list[Requirement] = []
        pos = 0

        def take() -> str | None:
            nonlocal pos
            if pos >= len(tokens):
                return None
            pos += 1
            return tokens[pos - 1]

        def fail(found: str | None, expected: str) -> ApiError:
            return bad_request(
                f"unable to parse requirement: found '{found or ''}' expected: {expected}"
            )

        while pos < len(tokens):
            first = take()
            negated = first == "!"
            key = take() if negated else first
            if key is None or not _LABEL_KEY.match(key):
                raise bad_request(f"unable to parse requirement: invalid label key {key!r}")
            nxt = tokens[pos] if pos < len(tokens) else None
            if negated:
                reqs.append(Requirement(key, "!"))
            elif nxt is None or nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                take()
                value = ""
                if pos < len(tokens) and tokens[pos] != ",":
                    value = take() or ""
                if not _LABEL_VALUE.match(value):
                    raise bad_request(f"unable to parse requirement: invalid label value {value!r}")
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", frozenset({value})))
            elif nxt in ("in", "notin"):
                take()
                if (paren := take()) != "(":
                    raise fail(paren, "'('")
                values: set[str] = set()
                while True:
                    item = take()
                    if item == ")":
                        break
                    if item in (None, ","):
                        raise fail(item, "identifier")
                    values.add(item)
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        raise fail(sep, "',' or ')'")
                reqs.append(Requirement(key, "in" if nxt == "in" else "notin", frozenset(values)))
            else:
                raise fail(nxt, "'=', '!=', '==', 'in', notin'")
            if pos < len(tokens):
                if tokens[pos] != ",":
                    raise fail(tokens[pos], "','")
                pos += 1
        return cls(tuple(reqs))


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for name, equal, value in self.terms:
            if name == "type":
                actual = str(obj.get("type", ""))
            else:
                actual = str(_meta(obj).get(name.removeprefix("metadata."), "") or "")
            if (actual == value) != equal:
                return False
        return True

    @classmethod
    def parse(cls, text: str, rtype: ResourceType) -> FieldSelector:
        terms: list[tuple[str, bool, str]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = re.match(r"^([^=!]+)(==|!=|=)(.*)$", part)
            if not match:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            name, op, value = match.groups()
            if name not in rtype.field_labels:
                raise bad_request(f"field label not supported: {name}")
            terms.append((name, op != "!=", value))
        return cls(tuple(terms))


# --------------------------------------------------------------------------------------------
# CRD schema: defaults, pruning, validation (what the apiserver does with openAPIV3Schema)
# --------------------------------------------------------------------------------------------

_ROOT_KEPT: Final = frozenset({"apiVersion", "kind", "metadata"})


class CrdSchema:
    """Structural-schema handling of a custom resource, as the apiserver does it.

    Pruning drops unknown fields (unless ``x-kubernetes-preserve-unknown-fields``) and nulls
    of non-nullable fields; defaults fill absent fields; validation uses JSON Schema draft 4,
    which ignores the ``x-kubernetes-*`` extensions and CEL rules (those only run on a real
    server) and reports errors with the apiserver's reasons and field paths.
    """

    def __init__(self, schema: Json) -> None:
        self.schema = schema
        self._validator = jsonschema.Draft4Validator(schema)

    def prune(self, obj: Json) -> None:
        self._prune(obj, self.schema, root=True)

    def _prune(self, value: Any, schema: Mapping[str, Any], root: bool = False) -> None:
        if isinstance(value, dict):
            props = schema.get("properties")
            additional = schema.get("additionalProperties")
            keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or (
                schema.get("x-kubernetes-embedded-resource")
            )
            for key in list(value):
                sub: Mapping[str, Any] | None = None
                if props is not None and key in props:
                    sub = props[key]
                elif isinstance(additional, dict):
                    sub = additional
                elif root and key in _ROOT_KEPT:
                    continue
                elif not keep_unknown and (props is not None or additional is not None):
                    del value[key]
                    continue
                if sub is None:
                    continue
                if value[key] is None and not sub.get("nullable"):
                    del value[key]
                    continue
                self._prune(value[key], sub)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                self._prune(item, schema["items"])

    def default(self, obj: Json) -> None:
        self._default(obj, self.schema)

    def _default(self, value: Any, schema: Mapping[str, Any]) -> None:
        if isinstance(value, dict):
            for key, sub in (schema.get("properties") or {}).items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    self._default(value[key], sub)
            additional = schema.get("additionalProperties")
            if isinstance(additional, dict):
                for key in value:
                    if key not in (schema.get("properties") or {}):
                        self._default(value[key], additional)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                self._default(item, schema["items"])

    def validate(self, obj: Json) -> list[Cause]:
        body = {k: v for k, v in obj.items() if k != "metadata"}
        return [_cause(error) for error in self._validator.iter_errors(body)]

    def list_map_keys(self, path: Sequence[str]) -> tuple[str, ...] | None:
        """``x-kubernetes-list-map-keys`` of the list at ``path`` (dict keys only), if any."""
        node: Mapping[str, Any] = self.schema
        for key in path:
            props = node.get("properties") or {}
            if key in props:
                node = props[key]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]
            else:
                return None
        if node.get("x-kubernetes-list-type") == "map":
            return tuple(node.get("x-kubernetes-list-map-keys") or ())
        return None


def _field_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _go_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _cause(error: jsonschema.ValidationError) -> Cause:
    path = list(error.absolute_path)
    where = _field_path(path)
    in_body = _field_path(path[1:]) or where
    validator = error.validator
    if validator == "required":
        missing = re.match(r"'(.*)' is a required property", error.message)
        name = missing.group(1) if missing else "?"
        return Cause("FieldValueRequired", "Required value", f"{where}.{name}" if where else name)
    if validator == "enum":
        choices: list[Any] = error.schema.get("enum", []) if isinstance(error.schema, dict) else []
        allowed = ", ".join(_go_value(v) for v in choices)
        return Cause(
            "FieldValueNotSupported",
            f"Unsupported value: {_go_value(error.instance)}: supported values: {allowed}",
            where,
        )
    limit = error.validator_value
    text = {
        "minLength": f"should be at least {limit} chars long",
        "maxLength": f"may not be longer than {limit}",
        "minimum": f"should be greater than or equal to {limit}",
        "maximum": f"should be less than or equal to {limit}",
        "pattern": f"should match '{limit}'",
        "minItems": f"should have at least {limit} items",
        "maxItems": f"should have at most {limit} items",
        "type": f"must be of type {limit}: {_go_value(type(error.instance).__name__)}",
    }.get(str(validator), error.message)
    return Cause(
        "FieldValueInvalid",
        f"Invalid value: {_go_value(error.instance)}: {in_body} in body {text}",
        where,
    )


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _generic_invalid()
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node[part]
        else:
            raise KeyError(part)
    return node, parts[-1]


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; any failure (a failing ``test`` included) is a 422."""
    if not isinstance(operations, list):
        raise bad_request(
            "json: cannot unmarshal object into Go value of type []jsonpatch.Operation"
        )
    doc = copy.deepcopy(doc)
    try:
        for op in operations:
            kind = op["op"]
            parts = _pointer(op["path"])
            if kind == "test":
                node: Any = doc
                for part in parts:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                if node != op["value"]:
                    raise _generic_invalid()
                continue
            if kind in ("move", "copy"):
                source, last = _container(doc, _pointer(op["from"]))
                value = source[int(last)] if isinstance(source, list) else source[last]
                value = copy.deepcopy(value)
                if kind == "move":
                    del source[int(last) if isinstance(source, list) else last]
                kind, new_value = "add", value
            else:
                new_value = op.get("value")
            if not parts:
                if kind in ("add", "replace"):
                    doc = copy.deepcopy(new_value)
                    continue
                raise _generic_invalid()
            parent, last = _container(doc, parts)
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(new_value))
                elif kind == "replace":
                    parent[index] = copy.deepcopy(new_value)
                elif kind == "remove":
                    del parent[index]
                else:
                    raise _generic_invalid()
            elif isinstance(parent, dict):
                if kind in ("replace", "remove") and last not in parent:
                    raise _generic_invalid()
                if kind in ("add", "replace"):
                    parent[last] = copy.deepcopy(new_value)
                elif kind == "remove":
                    del parent[last]
                else:
                    raise _generic_invalid()
            else:
                raise _generic_invalid()
    except (KeyError, IndexError, ValueError, TypeError):
        raise _generic_invalid() from None
    return doc


def _list_merge_keys(
    rtype: ResourceType, schema: CrdSchema | None, path: Sequence[str]
) -> tuple[str, ...] | None:
    dotted = ".".join(path)
    for where, key in rtype.merge_keys:
        if where == dotted:
            return (key,)
    if path == ("metadata", "ownerReferences"):
        return ("uid",)
    if schema is not None:
        return schema.list_map_keys(path)
    return None


def keyed_merge(
    target: Any,
    patch: Any,
    keys_at: Callable[[tuple[str, ...]], tuple[str, ...] | None],
    path: tuple[str, ...] = (),
    *,
    apply: bool = False,
) -> Any:
    """Strategic merge patch (``apply=False``) or server-side apply merge (``apply=True``):
    maps merge, lists with merge keys merge by key, other lists are replaced. Supports the
    ``$patch: replace|delete`` directives; other ``$`` directives are ignored."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        clean = {k: v for k, v in patch.items() if not k.startswith("$")}
        if directive == "replace":
            return copy.deepcopy(clean)
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in clean.items():
            if value is None and not apply:
                result.pop(key, None)
            else:
                result[key] = keyed_merge(
                    result.get(key), value, keys_at, (*path, key), apply=apply
                )
        return result
    if isinstance(patch, list):
        keys = keys_at(path)
        if path == ("metadata", "finalizers") and isinstance(target, list):
            return list(dict.fromkeys([*target, *patch]))
        if not keys or not isinstance(target, list):
            return [
                {k: v for k, v in item.items() if not k.startswith("$")}
                if isinstance(item, dict)
                else item
                for item in copy.deepcopy(patch)
                if not (isinstance(item, dict) and item.get("$patch") == "delete")
            ]
        result_list = [copy.deepcopy(item) for item in target]

        def ident(item: Any) -> tuple[Any, ...] | None:
            return tuple(item.get(k) for k in keys) if isinstance(item, dict) else None

        for item in patch:
            wanted = ident(item)
            index = next((i for i, t in enumerate(result_list) if ident(t) == wanted), None)
            if isinstance(item, dict) and item.get("$patch") == "delete":
                if index is not None:
                    del result_list[index]
            elif index is None:
                result_list.append(keyed_merge(None, item, keys_at, path, apply=apply))
            else:
                result_list[index] = keyed_merge(
                    result_list[index], item, keys_at, path, apply=apply
                )
        return result_list
    return copy.deepcopy(patch)


# --------------------------------------------------------------------------------------------
# Managed fields (enough server-side apply to own fields and report conflicts)
# --------------------------------------------------------------------------------------------

FieldPath = tuple[str, ...]


def field_leaves(
    value: Any,
    keys_at: Callable[[tuple[str, ...]], tuple[str, ...] | None],
    path: tuple[str, ...] = (),
    fpath: FieldPath = (),
) -> dict[FieldPath, Any]:
    """Leaf field paths (``f:spec``, ``k:{"type":"Ready"}``) and their values; lists without
    map keys are atomic leaves, like the apiserver's ``atomic`` lists."""
    leaves: dict[FieldPath, Any] = {}
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            leaves.update(field_leaves(sub, keys_at, (*path, key), (*fpath, f"f:{key}")))
        return leaves
    if isinstance(value, list) and value and (keys := keys_at(path)):
        for item in value:
            if not isinstance(item, dict):
                return {fpath: value}
            ident = json.dumps(
                {k: item.get(k) for k in keys}, separators=(",", ":"), sort_keys=True
            )
            leaves.update(field_leaves(item, keys_at, path, (*fpath, f"k:{ident}")))
        return leaves
    if fpath:
        leaves[fpath] = value
    return leaves


def _fields_v1(paths: Iterable[FieldPath], dot: bool) -> Json:
    tree: Json = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(part, {})
    if dot:
        # An Update owns the maps it set ("."); metadata itself always pre-exists.

        def mark(node: Json) -> None:
            for key, child in node.items():
                if child:
                    if key != "f:metadata":
                        child.setdefault(".", {})
                    mark(child)

        mark(tree)
    return tree


def _owned_from_fields_v1(tree: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    out: set[FieldPath] = set()
    for key, child in tree.items():
        if key == ".":
            continue
        path = (*prefix, key)
        inner = {k: v for k, v in (child or {}).items() if k != "."}
        if inner:
            out |= _owned_from_fields_v1(inner, path)
        else:
            out.add(path)
    return out


def _path_text(path: FieldPath) -> str:
    out = ""
    for part in path:
        if part.startswith("f:"):
            out += "." + part[2:]
        else:
            keys = json.loads(part[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
    return out


# --------------------------------------------------------------------------------------------
# Storage, history and watch streams
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One committed write. For DELETED, ``new`` is the final state stamped with the deletion
    RV; for selector exits the watch sends ``old`` stamped with ``revision``."""

    revision: int
    rtype: ResourceType
    type: EventType
    old: Json | None
    new: Json


@dataclass(frozen=True)
class WatchFilter:
    rtype: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector

    def selects(self, obj: Json | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and _meta(obj).get("namespace") != self.namespace:
            return False
        return self.labels.matches(_labels(obj)) and self.fields.matches(obj)

    def event(self, change: Change) -> tuple[str, Json] | None:
        """What a watch with this filter sees for ``change`` (selector entry/exit included)."""
        if change.rtype != self.rtype:
            return None
        was = change.type != "ADDED" and self.selects(change.old)
        now = change.type != "DELETED" and self.selects(change.new)
        if change.type == "DELETED":
            return ("DELETED", change.new) if self.selects(change.old) else None
        if was and now:
            return "MODIFIED", change.new
        if now:
            return "ADDED", change.new
        if was and change.old is not None:
            gone = copy.deepcopy(change.old)
            gone["metadata"]["resourceVersion"] = str(change.revision)
            return "DELETED", gone
        return None


@dataclass
class _Item:
    kind: Literal["event", "bookmark", "close"]
    payload: Json | None = None


@dataclass(eq=False)
class WatchStream:
    filter: WatchFilter
    start_rv: int
    bookmarks: bool
    connection: socket.socket
    started: float = field(default_factory=time.monotonic)
    items: queue.Queue[_Item] = field(default_factory=queue.Queue)
    dropped: bool = False

    def offer(self, change: Change) -> None:
        event = self.filter.event(change)
        if event is not None:
            self.items.put(_Item("event", {"type": event[0], "object": event[1]}))


class Store:
    """One etcd-like global revision for every kind, objects, bounded history and watches."""

    def __init__(self, history_limit: int) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.revision = 0
        self.floor = 0  # oldest RV a watch may resume from
        self.history_limit = history_limit
        self.history: deque[Change] = deque()
        self.objects: dict[tuple[str, str, str], Json] = {}
        self.watches: set[WatchStream] = set()

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Json | None:
        obj = self.objects.get((rtype.plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def commit(self, rtype: ResourceType, type_: EventType, old: Json | None, new: Json) -> Json:
        with self.lock:
            self.revision += 1
            stored = copy.deepcopy(new)
            stored["metadata"]["resourceVersion"] = str(self.revision)
            key = (rtype.plural, *_key(stored))
            if type_ == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = stored
            change = Change(self.revision, rtype, type_, copy.deepcopy(old), copy.deepcopy(stored))
            self.history.append(change)
            while len(self.history) > self.history_limit:
                self.floor = self.history.popleft().revision
            for watch in list(self.watches):
                watch.offer(change)
            self.changed.notify_all()
            return copy.deepcopy(stored)

    def items(self, rtype: ResourceType, at: int | None = None) -> list[Json]:
        """Objects of ``rtype`` sorted by namespace/name, as of revision ``at`` (rolled back
        through the retained history) or now."""
        current = {
            (ns, name): obj
            for (plural, ns, name), obj in self.objects.items()
            if plural == rtype.plural
        }
        if at is not None:
            for change in reversed(self.history):
                if change.revision <= at:
                    break
                if change.rtype.plural != rtype.plural:
                    continue
                key = _key(change.new)
                if change.type == "ADDED":
                    current.pop(key, None)
                elif change.old is not None:
                    current[key] = change.old
        return [copy.deepcopy(current[k]) for k in sorted(current)]


# --------------------------------------------------------------------------------------------
# Identity and RBAC
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return "system:masters" in self.groups


ANONYMOUS: Final = User("system:anonymous", ("system:unauthenticated",))


def service_account_user(namespace: str, name: str) -> User:
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


@dataclass(frozen=True)
class Attributes:
    verb: str
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def resource(self) -> str:
        return f"{self.rtype.plural}/{self.subresource}" if self.subresource else self.rtype.plural


def _rule_allows(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    def has(items: Any, value: str) -> bool:
        return isinstance(items, list) and ("*" in items or value in items)

    if not has(rule.get("verbs"), attrs.verb) or not has(rule.get("apiGroups"), attrs.rtype.group):
        return False
    if not has(rule.get("resources"), attrs.resource):
        return False
    names = rule.get("resourceNames")
    return not names or (attrs.name is not None and attrs.name in names)


def _subject_is(subject: Mapping[str, Any], user: User) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        return (
            user.name == f"system:serviceaccount:{subject.get('namespace')}:{subject.get('name')}"
        )
    return False


# --------------------------------------------------------------------------------------------
# Fault injection and the request log
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    code: int
    times: int
    watch: bool | None
    retry_after: int | None
    reason: str
    message: str

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (
            self.times != 0
            and self.method in ("*", method)
            and bool(self.path.search(path))
            and (self.watch is None or self.watch == watch)
        )


@dataclass(frozen=True)
class Ownership:
    """Who writes: the field manager, the operation, the subresource, and for an Apply the
    fields it applied."""

    manager: str
    operation: Literal["Update", "Apply"]
    subresource: str | None
    applied: set[FieldPath] | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    user: str
    content_type: str | None
    code: int
    watch: bool
    body: Any


# --------------------------------------------------------------------------------------------
# Request routing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: KubeApiServer

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """Cut every client connection (keep-alive ones included) so no handler outlives
        the server."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _dispatch(self) -> None:
        self.server.api._handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_head_only(self, code: int, headers: Sequence[tuple[str, str]]) -> None:
        self.send_response_only(code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Date", self.date_time_string())
        self.end_headers()

    def send_body(self, code: int, body: bytes, headers: Sequence[tuple[str, str]]) -> None:
        if len(body) > _CHUNK:
            self.send_head_only(code, [*headers, ("Transfer-Encoding", "chunked")])
            for start in range(0, len(body), _CHUNK):
                self.write_chunk(body[start : start + _CHUNK])
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_head_only(code, [*headers, ("Content-Length", str(len(body)))])
            self.wfile.write(body)
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _verb(method: str, target: Target, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else ("get" if target.name else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: email.message.Message
    body: bytes
    user: User = ANONYMOUS
    recorded: bool = False

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def watch(self) -> bool:
        return self.query.get("watch", "").lower() in ("1", "true")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise bad_request(f"error decoding request body: {exc}") from None

    @property
    def manager(self) -> str:
        if self.query.get("fieldManager"):
            return self.query["fieldManager"]
        agent = self.headers.get("User-Agent") or "unknown"
        return agent.split("/")[0]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class KubeApiServer:
    """An in-process Kubernetes API server on 127.0.0.1 (a thread per connection).

    ``crd`` is the AbusePolicy CustomResourceDefinition (a dict, see :func:`load_crd`).
    With ``rbac=True`` every user but ``system:masters`` is authorized from the stored
    Roles/ClusterRoles and their bindings, as the real RBAC authorizer does.
    """

    def __init__(
        self,
        crd: Mapping[str, Any],
        *,
        namespaces: Iterable[str] = ("default", "kube-system", "shop"),
        history_limit: int = 10_000,
        bookmark_lead: float = 1.5,
        bookmark_period: float = 60.0,
        max_watch_seconds: float = 1800.0,
        rbac: bool = False,
        tls: bool = False,
    ) -> None:
        self.store = Store(history_limit)
        self.bookmark_lead = bookmark_lead
        self.bookmark_period = bookmark_period
        self.max_watch_seconds = max_watch_seconds
        self.rbac = rbac
        self.tokens: dict[str, User] = {
            ADMIN_TOKEN: User("admin", ("system:masters", "system:authenticated"))
        }
        self.requests: list[RecordedRequest] = []
        # Tracebacks of this server's own bugs (answered as 500); a test may assert it is empty.
        self.internal_errors: list[str] = []
        self._faults: list[Fault] = []
        self._initializing = 0
        self._lock = threading.Lock()
        self._crs = {cr.type.plural: cr for cr in custom_resources(crd)}
        self._types: dict[tuple[str, str], dict[str, ResourceType]] = {}
        for rtype in (*BUILTIN_TYPES, *(cr.type for cr in self._crs.values())):
            self._types.setdefault((rtype.group, rtype.version), {})[rtype.plural] = rtype
        self._cluster_ips = (str(ip) for ip in ipaddress.ip_network("10.96.0.0/16").hosts())
        next(self._cluster_ips)  # 10.96.0.1 is the kubernetes Service
        self._http = _HttpServer(("127.0.0.1", 0))
        self._http.api = self
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self.ca_file: Path | None = None
        if tls:
            self._enable_tls()
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.ensure_namespace(ns)
        self._seed_kubernetes_service()
        # The watch cache starts when the server does: older RVs are already "too old".
        self.compact()

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> KubeApiServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.drop_watches(clean=False)
        self._http.shutdown()
        self._http.server_close()
        self._http.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _enable_tls(self) -> None:
        cert, key = self_signed_pem(
            "kube-apiserver-test", dns_names=("localhost",), valid_for_hours=24
        )
        self._tls_dir = tempfile.TemporaryDirectory(prefix="kube-apiserver-")
        directory = Path(self._tls_dir.name)
        (directory / "tls.crt").write_bytes(cert)
        (directory / "tls.key").write_bytes(key)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
        self.ca_file = directory / "tls.crt"

    # ---- clients ---------------------------------------------------------------------------

    def client_configuration(self, token: str = ADMIN_TOKEN) -> Any:
        """A ``kubernetes.client.Configuration`` for this server and bearer token."""
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        config.api_key = {"BearerToken": token}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        if self.ca_file is not None:
            config.ssl_ca_cert = str(self.ca_file)
        return config

    def api_client(self, token: str = ADMIN_TOKEN) -> Any:
        from kubernetes import client

        return client.ApiClient(self.client_configuration(token))

    def write_kubeconfig(
        self, path: Path, token: str = ADMIN_TOKEN, namespace: str = "default"
    ) -> Path:
        """A kubeconfig file for ``KUBECONFIG=...`` (what ``serve --kubernetes`` loads)."""
        cluster: Json = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "test", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def add_token(self, token: str, user: User) -> str:
        self.tokens[token] = user
        return token

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token that authenticates as ``system:serviceaccount:<ns>:<name>``."""
        return self.add_token(
            f"sa-{namespace}-{name}-{secrets.token_hex(4)}", service_account_user(namespace, name)
        )

    # ---- direct state access (no HTTP) -------------------------------------------------------

    def resource(self, plural: str) -> ResourceType:
        for types in self._types.values():
            if plural in types:
                return types[plural]
        raise KeyError(plural)

    def get(self, plural: str, namespace: str, name: str) -> Json | None:
        with self.store.lock:
            return self.store.get(self.resource(plural), namespace, name)

    def objects(self, plural: str) -> list[Json]:
        with self.store.lock:
            return self.store.items(self.resource(plural))

    @property
    def revision(self) -> int:
        return self.store.revision

    def create(self, obj: Mapping[str, Any], *, validate: bool = True) -> Json:
        """Create ``obj`` as the admin would (``validate=False`` skips the CRD schema, to
        store what a schema change or an older server let through)."""
        rtype = self._type_of(obj)
        namespace = (_meta(obj).get("namespace") or "default") if rtype.namespaced else None
        with self.store.lock:
            return self._create(
                rtype, namespace, copy.deepcopy(dict(obj)), "test", validate=validate
            )

    def update(self, obj: Mapping[str, Any], *, validate: bool = True) -> Json:
        """Replace ``obj`` as the admin would (no resourceVersion precondition). With
        ``validate=False`` the CRD schema is skipped: how a test stores a spec that only the
        product's own validation rejects, or one an older CRD version let through."""
        rtype = self._type_of(obj)
        meta = _meta(obj)
        namespace = (meta.get("namespace") or "default") if rtype.namespaced else None
        target = Target(rtype, namespace, str(meta.get("name")), None)
        with self.store.lock:
            current = self._current(target)
            proposed = copy.deepcopy(dict(obj))
            proposed.setdefault("metadata", {})["resourceVersion"] = _meta(current)[
                "resourceVersion"
            ]
            return self._write(target, current, proposed, "test", "Update", validate=validate)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        rtype = self.resource(plural)
        target = Target(rtype, namespace if rtype.namespaced else None, name, None)
        with self.store.lock:
            current = self._current(target)
            self.store.commit(rtype, "DELETED", current, current)

    def ensure_namespace(self, name: str) -> None:
        with self.store.lock:
            if self.store.get(_NAMESPACES, "", name) is None:
                self._create(_NAMESPACES, None, {"metadata": {"name": name}}, "test")

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        for rtype in self._types.get((group, version), {}).values():
            if rtype.kind == obj.get("kind"):
                return rtype
        raise KeyError(f"{obj.get('apiVersion')} {obj.get('kind')} is not served")

    def _seed_kubernetes_service(self) -> None:
        with self.store.lock:
            self._create(
                _SERVICES,
                "default",
                {
                    "metadata": {
                        "name": "kubernetes",
                        "labels": {"component": "apiserver", "provider": "kubernetes"},
                    },
                    "spec": {
                        "ports": [{"name": "https", "port": 443, "targetPort": self.port}],
                        "clusterIP": "10.96.0.1",
                    },
                },
                "kube-apiserver",
            )

    # ---- test hooks --------------------------------------------------------------------------

    def compact(self, revision: int | None = None) -> None:
        """Forget the history up to ``revision`` (default: now), as a watch cache that lost it:
        watches and continue tokens from older RVs then get 410 Expired."""
        with self.store.lock:
            target = self.store.revision if revision is None else revision
            while self.store.history and self.store.history[0].revision <= target:
                self.store.history.popleft()
            self.store.floor = max(self.store.floor, target)

    def restart(self, initializing: int = 1) -> None:
        """Simulate an apiserver restart: every watch stream is cut, history and continue
        tokens are forgotten, and the next ``initializing`` watches get 429 "storage is
        (re)initializing" with Retry-After: 1 (as recorded on v1.36)."""
        self.drop_watches(clean=False)
        self.compact()
        with self._lock:
            self._initializing = initializing

    def drop_watches(self, clean: bool = False, plural: str | None = None) -> int:
        """End open watch streams: ``clean`` ends them with the terminating chunk (as at a
        server timeout); otherwise the TCP connection is cut mid-stream. Returns how many."""
        with self.store.lock:
            streams = [w for w in self.store.watches if plural in (None, w.filter.rtype.plural)]
            for stream in streams:
                self.store.watches.discard(stream)
                stream.dropped = not clean
                stream.items.put(_Item("close"))
                if not clean:
                    with contextlib.suppress(OSError):
                        stream.connection.shutdown(socket.SHUT_RDWR)
        return len(streams)

    def send_bookmarks(self) -> int:
        """Send a BOOKMARK at the current revision on every watch that allowed bookmarks."""
        with self.store.lock:
            streams = [w for w in self.store.watches if w.bookmarks]
            for stream in streams:
                stream.items.put(_Item("bookmark", self._bookmark(stream.filter.rtype)))
        return len(streams)

    def inject(
        self,
        code: int,
        *,
        path: str = "",
        method: str = "*",
        times: int = 1,
        watch: bool | None = None,
        retry_after: int | None = None,
        reason: str | None = None,
        message: str = "injected failure",
    ) -> Fault:
        """Answer the next ``times`` requests whose path matches the regex ``path`` with an
        error Status (``times=-1``: until :meth:`clear_faults`)."""
        if retry_after is None and code == 429:
            retry_after = 1
        fault = Fault(
            method.upper(),
            re.compile(path),
            code,
            times,
            watch,
            retry_after,
            reason or _DEFAULT_REASONS.get(code, "InternalError"),
            message,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def watch_count(self, plural: str | None = None) -> int:
        with self.store.lock:
            return sum(1 for w in self.store.watches if plural in (None, w.filter.rtype.plural))

    def wait_for_watches(self, plural: str, count: int = 1, timeout: float = 10.0) -> None:
        """Block until at least ``count`` watches of ``plural`` are open."""
        deadline = time.monotonic() + timeout
        while self.watch_count(plural) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {count} open watch(es) of {plural} within {timeout}s")
            time.sleep(0.01)

    def requests_to(self, plural: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if re.search(rf"/{re.escape(plural)}(/|$)", r.path) and method in (None, r.method)
            ]

    # ---- HTTP entry point ---------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = _Request(handler.command, split.path, query, handler.headers, body)
        code = 500
        try:
            request.user = self._authenticate(request)
            self._check_faults(request)
            target = self._route(request.path)
            if target is None:
                code = 200
                handler.send_body(200, encode(_VERSION), [("Content-Type", "application/json")])
                return
            self._authorize(request, target)
            if request.method == "GET" and request.watch:
                self._serve_watch(handler, request, target)
                code = 200
                return
            code, payload = self._serve(request, target, handler.headers.get("Accept") or "")
            handler.send_body(code, encode(payload), [("Content-Type", "application/json")])
        except PageNotFound:
            code = 404
            handler.send_body(
                404,
                b"404 page not found\n",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            )
        except ApiError as error:
            code = error.code
            headers = [("Content-Type", "application/json"), *error.headers]
            if code == 403:
                headers.append(("X-Content-Type-Options", "nosniff"))
            handler.send_body(code, encode(error.status()), headers)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        except Exception as exc:  # a bug in this server: answer 500 and keep it for the test
            code = 500
            self.internal_errors.append(traceback.format_exc())
            with contextlib.suppress(OSError):
                bug = ApiError(500, "InternalError", f"fake apiserver bug: {exc!r}")
                handler.send_body(500, encode(bug.status()), [("Content-Type", "application/json")])
        finally:
            if not request.recorded:
                self._record(request, code)

    def _record(self, request: _Request, code: int) -> None:
        request.recorded = True
        try:
            body = request.json() if request.body else None
        except ApiError:
            body = request.body.decode(errors="replace")
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.query),
                    request.user.name,
                    request.headers.get("Content-Type"),
                    code,
                    request.watch,
                    body,
                )
            )

    def _authenticate(self, request: _Request) -> User:
        header = request.headers.get("Authorization")
        if header is None:
            return ANONYMOUS
        token = header.removeprefix("Bearer ").strip()
        user = self.tokens.get(token)
        if user is None or not header.startswith("Bearer "):
            raise ApiError(401, "Unauthorized", "Unauthorized")
        impersonate = request.headers.get("Impersonate-User")
        if impersonate and user.is_admin:
            match = re.match(r"^system:serviceaccount:([^:]+):([^:]+)$", impersonate)
            if match:
                return service_account_user(match.group(1), match.group(2))
            groups = tuple(request.headers.get_all("Impersonate-Group") or ())
            return User(impersonate, (*groups, "system:authenticated"))
        return user

    def _check_faults(self, request: _Request) -> None:
        with self._lock:
            if self._initializing and request.watch:
                self._initializing -= 1
                raise ApiError(
                    429,
                    "TooManyRequests",
                    "storage is (re)initializing",
                    _details(retry_after=1),
                    headers=[("Retry-After", "1")],
                )
            for fault in self._faults:
                if fault.matches(request.method, request.path, request.watch):
                    if fault.times > 0:
                        fault.times -= 1
                    headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after else []
                    details = _details(retry_after=fault.retry_after) if fault.retry_after else None
                    raise ApiError(
                        fault.code, fault.reason, fault.message, details, headers=headers
                    )

    def _route(self, path: str) -> Target | None:
        if path in ("/version", "/version/"):
            return None
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise PageNotFound(path)
        types = self._types.get((group, version))
        if not types or not rest:
            raise PageNotFound(path)
        namespace: str | None = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and rest[2] in types
            and types[rest[2]].namespaced
        ):
            namespace, rest = rest[1], rest[2:]
        rtype = types.get(rest[0])
        if rtype is None or len(rest) > 3:
            raise PageNotFound(path)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rtype.status_subresource):
            raise PageNotFound(path)
        if rtype.namespaced and namespace is None and name is not None:
            raise PageNotFound(path)
        return Target(rtype, namespace, name, sub)

    def _authorize(self, request: _Request, target: Target) -> None:
        verb = _verb(request.method, target, request.watch)
        attrs = Attributes(verb, target.rtype, target.namespace, target.name, target.subresource)
        user = request.user
        if user is not ANONYMOUS and (user.is_admin or not self.rbac):
            return
        if user is not ANONYMOUS and self._rbac_allows(user, attrs):
            return
        rtype = target.rtype
        scope = (
            f'in the namespace "{target.namespace}"' if target.namespace else "at the cluster scope"
        )
        subject = f'{rtype.qualified} "{target.name}"' if target.name else rtype.qualified
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user.name}" cannot {verb} resource '
            f'"{attrs.resource}" in API group "{rtype.group}" {scope}',
            _details(target.name, rtype.group, rtype.plural),
        )

    def _rbac_allows(self, user: User, attrs: Attributes) -> bool:
        with self.store.lock:
            bindings = [
                b
                for b in self.store.items(_ROLE_BINDINGS)
                if attrs.namespace is not None and _meta(b).get("namespace") == attrs.namespace
            ] + self.store.items(_CLUSTER_ROLE_BINDINGS)
            for binding in bindings:
                if not any(_subject_is(s, user) for s in binding.get("subjects") or ()):
                    continue
                ref = binding.get("roleRef") or {}
                if ref.get("kind") == "Role":
                    role = self.store.get(
                        _ROLES, str(_meta(binding).get("namespace")), str(ref.get("name"))
                    )
                else:
                    role = self.store.get(_CLUSTER_ROLES, "", str(ref.get("name")))
                if role and any(_rule_allows(rule, attrs) for rule in role.get("rules") or ()):
                    return True
        return False

    # ---- verbs --------------------------------------------------------------------------------

    def _serve(self, request: _Request, target: Target, accept: str) -> tuple[int, Json]:
        rtype, ns, name = target.rtype, target.namespace, target.name
        with self.store.lock:
            if request.method == "GET" and name is None:
                if "as=Table" in accept and rtype.plural in self._crs:
                    return 200, self._table(request, target)
                return 200, self._list(request, target)
            if request.method == "GET":
                obj = self.store.get(rtype, ns or "", name or "")
                if obj is None:
                    raise self._not_found(rtype, name or "")
                return 200, render(rtype, obj)
            if (
                request.method == "POST"
                and name is None
                and (ns is not None or not rtype.namespaced)
            ):
                body = request.json()
                if not isinstance(body, dict):
                    raise bad_request("the body of the request must be an object")
                self._check_type(rtype, body)
                created = self._create(rtype, ns, body, request.manager)
                return 201, render(rtype, created)
            if request.method == "PUT" and name is not None:
                return 200, render(rtype, self._update(request, target))
            if request.method == "PATCH" and name is not None:
                return 200, render(rtype, self._patch(request, target))
            if request.method == "DELETE" and name is not None and target.subresource is None:
                return 200, self._delete(request, target)
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _not_found(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{rtype.qualified} "{name}" not found',
            _details(name, rtype.group, rtype.plural),
        )

    def _conflict(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {rtype.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            _details(name, rtype.group, rtype.plural),
        )

    def _invalid(self, rtype: ResourceType, name: str, causes: Sequence[Cause]) -> ApiError:
        rendered = [f"{c.field}: {c.message}" for c in causes]
        joined = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
        kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
        return ApiError(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: {joined}',
            _details(name, rtype.group, rtype.kind, causes=causes),
        )

    def _check_type(self, rtype: ResourceType, body: Mapping[str, Any]) -> None:
        if body.get("apiVersion") not in (None, rtype.api_version):
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({rtype.api_version})"
            )
        if body.get("kind") not in (None, rtype.kind):
            raise bad_request(
                f"the kind in the data ({body.get('kind')}) does not match {rtype.kind}"
            )

    # ---- list, table and watch ------------------------------------------------------------------

    def _selection(self, request: _Request, target: Target) -> WatchFilter:
        return WatchFilter(
            target.rtype,
            target.namespace,
            LabelSelector.parse(request.query.get("labelSelector", "")),
            FieldSelector.parse(request.query.get("fieldSelector", ""), target.rtype),
        )

    def _list(self, request: _Request, target: Target) -> Json:
        rtype = target.rtype
        selection = self._selection(request, target)
        query = request.query
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        limit = int(query.get("limit") or 0)
        token = query.get("continue", "")
        start = ""
        at: int | None = None
        if token:
            at, start = self._decode_continue(token)
        elif rv_text == "0":
            limit = 0  # served from the cache: limit ignored, no continue
        elif rv_text and (match == "Exact" or (not match and limit)):
            at = int(rv_text)
            if at < self.store.floor:
                raise ApiError(
                    410, "Expired", "The resourceVersion for the provided list is too old."
                )
        list_rv = self.store.revision if at is None or at < 0 else at
        items = [
            obj
            for obj in self.store.items(rtype, None if at is None or at < 0 else at)
            if selection.selects(obj)
        ]
        keyed = [(self._storage_key(target, obj), obj) for obj in items]
        keyed = [(k, o) for k, o in keyed if k > start]
        page, rest = (keyed[:limit], keyed[limit:]) if limit else (keyed, [])
        meta: Json = {"resourceVersion": str(list_rv)}
        if rest:
            meta["continue"] = _continue_token(list_rv, page[-1][0] + "\x00")
            meta["remainingItemCount"] = len(rest)
        elif rtype.custom:
            meta["continue"] = ""
        body = {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": meta,
            # Items of built-in lists carry no kind/apiVersion; custom resources keep theirs.
            "items": [
                render(rtype, obj if rtype.custom else _without_type(obj)) for _, obj in page
            ],
        }
        return _sorted_deep(body) if rtype.custom else body

    def _storage_key(self, target: Target, obj: Json) -> str:
        namespace, name = _key(obj)
        if target.rtype.namespaced and target.namespace is None:
            return f"/{namespace}/{name}"
        return f"/{name}"

    def _decode_continue(self, token: str) -> tuple[int, str]:
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            rv, start = int(raw["rv"]), str(raw["start"])
        except (ValueError, KeyError, TypeError):
            raise bad_request(f"continue key is not valid: {token}") from None
        if not start.startswith("/"):
            start = "/" + start
        if rv >= 0 and rv < self.store.floor:
            raise ApiError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter, or use the continue "
                "token in this response to retrieve the remainder of the results. Continuing with "
                "the provided token results in an inconsistent list - objects that were created, "
                "modified, or deleted between the time the first chunk was returned and now may "
                "show up in the list.",
                metadata={"continue": _continue_token(-1, start.lstrip("/"))},
            )
        return rv, start

    def _table(self, request: _Request, target: Target) -> Json:
        listing = self._list(request, target)
        columns = self._crs[target.rtype.plural].printer_columns
        definitions = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": "Name",
                "priority": 0,
            }
        ] + [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": f"Custom resource definition column (in JSONPath format): {c['jsonPath']}",
                "priority": c.get("priority", 0),
            }
            for c in columns
        ]
        rows = []
        for obj in listing["items"]:
            cells: list[Any] = [_meta(obj).get("name")]
            for column in columns:
                value = _json_path(obj, column["jsonPath"])
                if column.get("type") == "date" and isinstance(value, str):
                    value = _age(value)
                cells.append(value)
            meta = _ordered(_meta(obj), _METADATA_ORDER)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": listing["metadata"]["resourceVersion"]},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    def _bookmark(self, rtype: ResourceType, initial_end: bool = False) -> Json:
        meta: Json = {"resourceVersion": str(self.store.revision)}
        if initial_end:
            meta = {"annotations": {INITIAL_EVENTS_END: "true"}, **meta}
        if rtype.custom:
            return {"apiVersion": rtype.api_version, "kind": rtype.kind, "metadata": meta}
        if rtype is _SERVICES:
            return {
                "kind": "Service",
                "apiVersion": "v1",
                "metadata": meta,
                "spec": {},
                "status": {"loadBalancer": {}},
            }
        return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}

    def _open_watch(
        self, request: _Request, target: Target, connection: socket.socket
    ) -> tuple[WatchStream, list[Json]]:
        """Register the stream and compute its backlog atomically (no gap, no duplicate)."""
        selection = self._selection(request, target)
        query = request.query
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        rv_text = query.get("resourceVersion", "")
        initial = query.get("sendInitialEvents", "").lower() == "true" or rv_text in ("", "0")
        backlog: list[Json] = []
        with self.store.lock:
            if initial:
                for obj in self.store.items(target.rtype):
                    if selection.selects(obj):
                        backlog.append({"type": "ADDED", "object": obj})
                if bookmarks:
                    backlog.append(
                        {
                            "type": "BOOKMARK",
                            "object": self._bookmark(target.rtype, initial_end=True),
                        }
                    )
                start = self.store.revision
            else:
                try:
                    start = int(rv_text)
                except ValueError:
                    raise bad_request(f"invalid resource version: {rv_text}") from None
                if start < self.store.floor:
                    gone = ApiError(
                        410, "Expired", f"too old resource version: {start} ({self.store.floor})"
                    )
                    return WatchStream(selection, start, bookmarks, connection), [
                        {"type": "ERROR", "object": gone.status()}
                    ]
                deadline = time.monotonic() + 3
                while start > self.store.revision:
                    if not self.store.changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise ApiError(
                            504,
                            "Timeout",
                            f"Too large resource version: {start}, current: {self.store.revision}",
                            _details(retry_after=1),
                        )
                for change in self.store.history:
                    if change.revision > start and (event := selection.event(change)) is not None:
                        backlog.append({"type": event[0], "object": event[1]})
            stream = WatchStream(selection, start, bookmarks, connection)
            self.store.watches.add(stream)
        return stream, backlog

    def _serve_watch(self, handler: _Handler, request: _Request, target: Target) -> None:
        timeout = float(request.query.get("timeoutSeconds") or self.max_watch_seconds)
        stream, backlog = self._open_watch(request, target, handler.connection)
        self._record(request, 200)
        rtype = target.rtype
        handler.send_head_only(
            200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
        )
        try:
            for event in backlog:
                if event["type"] == "ERROR":
                    handler.write_chunk(encode(event))
                    handler.wfile.write(b"0\r\n\r\n")
                    handler.wfile.flush()
                    return
                handler.write_chunk(encode(self._event_body(rtype, event)))
            self._pump(handler, stream, timeout)
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True
        finally:
            with self.store.lock:
                self.store.watches.discard(stream)

    def _event_body(self, rtype: ResourceType, event: Json) -> Json:
        if event["type"] == "BOOKMARK":
            return event
        return {"type": event["type"], "object": render(rtype, event["object"])}

    def _pump(self, handler: _Handler, stream: WatchStream, timeout: float) -> None:
        rtype = stream.filter.rtype
        started = stream.started
        deadline = started + timeout
        pre_deadline = deadline - self.bookmark_lead
        # As the cacher does: no pre-deadline bookmark when that moment is already past.
        next_bookmark = min(started + self.bookmark_period, pre_deadline)
        if next_bookmark <= started + 0.05:
            next_bookmark = float("inf")
        while True:
            now = time.monotonic()
            if now >= deadline:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
                return
            if _peer_closed(handler.connection):
                handler.close_connection = True
                return
            wait = min(deadline, next_bookmark) - now
            try:
                item = stream.items.get(timeout=max(0.0, min(wait, 0.1)))
            except queue.Empty:
                if time.monotonic() >= next_bookmark and stream.bookmarks:
                    with self.store.lock:
                        if not stream.items.empty():
                            continue  # deliver pending events before a bookmark that covers them
                        moved = self.store.revision > stream.start_rv
                        bookmark = self._bookmark(rtype)
                    if moved:
                        handler.write_chunk(encode({"type": "BOOKMARK", "object": bookmark}))
                    following = next_bookmark + self.bookmark_period
                    next_bookmark = pre_deadline if pre_deadline > next_bookmark else float("inf")
                    next_bookmark = min(next_bookmark, following)
                elif time.monotonic() >= next_bookmark:
                    next_bookmark = float("inf")
                continue
            if item.kind == "close":
                if not stream.dropped:
                    handler.wfile.write(b"0\r\n\r\n")
                    handler.wfile.flush()
                handler.close_connection = True
                return
            if item.kind == "bookmark":
                handler.write_chunk(encode({"type": "BOOKMARK", "object": item.payload}))
                continue
            assert item.payload is not None
            handler.write_chunk(encode(self._event_body(rtype, item.payload)))

    # ---- writes ----------------------------------------------------------------------------------

    def _prepare(
        self, rtype: ResourceType, obj: Json, name: str, *, status_only: bool = False
    ) -> None:
        """Kind defaults, CRD pruning/defaults and validation (raises 422). A /status write
        is validated against the status schema only, as the apiserver's statusSchemaValidator
        does: a stored spec the schema now refuses must not block status updates."""
        _tidy(obj)
        if rtype is _SERVICES:
            _default_service(obj, self._cluster_ips)
        elif rtype is _SECRETS:
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj.setdefault("type", "Opaque")
            if not data:
                obj.pop("data")
        elif rtype is _LEASES:
            spec = obj.get("spec") or {}
            for key in ("acquireTime", "renewTime"):
                if key in spec:
                    spec[key] = _micro_time(spec[key])
        elif rtype is _NAMESPACES:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        custom = self._crs.get(rtype.plural)
        if custom is not None and custom.schema is not None:
            # /status: only the status stanza is pruned, defaulted and validated; the rest
            # is the stored object, left exactly as it is.
            target = copy.deepcopy(obj) if status_only else obj
            custom.schema.prune(target)
            custom.schema.default(target)
            causes = custom.schema.validate(target)
            if status_only:
                causes = [c for c in causes if re.match(r"status(\.|\[|$)", c.field)]
                obj.pop("status", None)
                if "status" in target:
                    obj["status"] = target["status"]
            if causes:
                raise self._invalid(rtype, name, causes)

    def _create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Json,
        manager: str,
        *,
        validate: bool = True,
        applied: Callable[[Json], set[FieldPath]] | None = None,
    ) -> Json:
        meta = dict(body.get("metadata") or {})
        if rtype.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5)
            )
        name = meta.get("name")
        if not name:
            kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
            raise ApiError(
                422,
                "Invalid",
                f'{kind} "" is invalid: metadata.name: Required value: name or generateName is required',
                _details(
                    None,
                    rtype.group,
                    rtype.kind,
                    causes=[
                        Cause(
                            "FieldValueRequired",
                            "Required value: name or generateName is required",
                            "metadata.name",
                        )
                    ],
                ),
            )
        if rtype.namespaced and self.store.get(_NAMESPACES, "", str(namespace)) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                _details(str(namespace), "", "namespaces"),
            )
        if self.store.get(rtype, namespace or "", name) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{rtype.qualified} "{name}" already exists',
                _details(name, rtype.group, rtype.plural),
            )
        obj = {k: v for k, v in body.items() if k != "metadata"}
        if rtype.status_subresource and rtype.custom:
            obj.pop("status", None)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        for system in (
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ):
            meta.pop(system, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now_seconds()
        if rtype.tracks_generation:
            meta["generation"] = 1
        obj["metadata"] = meta
        if validate:
            self._prepare(rtype, obj, name)
        if applied is None:
            self._own(rtype, None, obj, Ownership(manager, "Update", None))
        else:
            self._own(rtype, None, obj, Ownership(manager, "Apply", None, applied(obj)))
        return self.store.commit(rtype, "ADDED", None, obj)

    def _current(self, target: Target) -> Json:
        obj = self.store.get(target.rtype, target.namespace or "", target.name or "")
        if obj is None:
            raise self._not_found(target.rtype, target.name or "")
        return obj

    def _update(self, request: _Request, target: Target) -> Json:
        body = request.json()
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be an object")
        self._check_type(target.rtype, body)
        current = self._current(target)
        rv = _meta(body).get("resourceVersion")
        if not rv:
            raise self._invalid(
                target.rtype,
                target.name or "",
                [
                    Cause(
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                        "metadata.resourceVersion",
                    )
                ],
            )
        if str(rv) != _meta(current)["resourceVersion"]:
            raise self._conflict(target.rtype, target.name or "")
        return self._write(target, current, body, request.manager, "Update")

    def _patch(self, request: _Request, target: Target) -> Json:
        rtype = target.rtype
        kind = request.content_type
        if kind not in (_MERGE_PATCH, _JSON_PATCH, _STRATEGIC, _APPLY) or (
            kind == _STRATEGIC and rtype.custom
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                + ", ".join(
                    [_JSON_PATCH, _MERGE_PATCH, _APPLY]
                    if rtype.custom
                    else [_JSON_PATCH, _MERGE_PATCH, _STRATEGIC, _APPLY]
                ),
            )
        custom = self._crs.get(rtype.plural)
        schema = custom.schema if custom else None

        def keys_at(path: tuple[str, ...]) -> tuple[str, ...] | None:
            return _list_merge_keys(rtype, schema, path)

        if kind == _APPLY:
            return self._apply(request, target, keys_at)
        current = self._current(target)
        if kind == _JSON_PATCH:
            patched = json_patch(current, request.json())
        elif kind == _MERGE_PATCH:
            patched = merge_patch(current, request.json())
        else:
            patched = keyed_merge(current, request.json(), keys_at)
        if not isinstance(patched, dict):
            raise _generic_invalid()
        rv = _meta(patched).get("resourceVersion")
        if rv is not None and str(rv) != _meta(current)["resourceVersion"]:
            raise self._conflict(rtype, target.name or "")
        return self._write(target, current, patched, request.manager, "Update")

    def _apply(
        self,
        request: _Request,
        target: Target,
        keys_at: Callable[[tuple[str, ...]], tuple[str, ...] | None],
    ) -> Json:
        rtype = target.rtype
        manager = request.query.get("fieldManager")
        if not manager:
            raise ApiError(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                _details(
                    None,
                    "meta.k8s.io",
                    "PatchOptions",
                    causes=[
                        Cause(
                            "FieldValueRequired",
                            "Required value: is required for apply patch",
                            "fieldManager",
                        )
                    ],
                ),
            )
        try:
            config = yaml.safe_load(request.body.decode() or "{}")
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request("apply patch must be an object")
        self._check_type(rtype, config)
        force = request.query.get("force", "").lower() == "true"
        current = self.store.get(rtype, target.namespace or "", target.name or "")
        if current is None:
            if target.subresource:
                raise self._not_found(rtype, target.name or "")
            config.setdefault("metadata", {})["name"] = target.name
            applied_body = {
                k: v for k, v in config.items() if k not in ("apiVersion", "kind", "metadata")
            }
            return self._create(
                rtype,
                target.namespace,
                config,
                manager,
                applied=lambda _obj: set(
                    field_leaves(self._scope(rtype, applied_body, None), keys_at)
                ),
            )
        applied = {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}
        applied["metadata"] = {
            k: v
            for k, v in _meta(config).items()
            if k in ("labels", "annotations", "finalizers", "ownerReferences")
        }
        if not applied["metadata"]:
            del applied["metadata"]
        scoped = self._scope(rtype, applied, target.subresource)
        leaves = field_leaves(scoped, keys_at)
        conflicts: list[tuple[str, FieldPath]] = []
        current_leaves = field_leaves(self._scope(rtype, current, target.subresource), keys_at)
        for entry in _meta(current).get("managedFields") or []:
            if entry.get("manager") == manager or entry.get("subresource") != target.subresource:
                continue
            owner = f'"{entry["manager"]}"'
            if target.subresource:
                owner += f' with subresource "{target.subresource}"'
            if entry.get("operation") == "Update":
                owner += f" using {entry.get('apiVersion')}"
            owned = _owned_from_fields_v1(entry.get("fieldsV1") or {})
            for path in sorted(leaves):
                if (
                    path in owned
                    and path in current_leaves
                    and current_leaves[path] != leaves[path]
                ):
                    conflicts.append((owner, path))
        if conflicts and not force:
            by_owner: dict[str, list[str]] = {}
            for owner, path in conflicts:
                by_owner.setdefault(owner, []).append(f"- {_path_text(path)}")
            summary = "\n".join(
                f"conflicts with {o}:\n" + "\n".join(p) for o, p in by_owner.items()
            )
            count = len(conflicts)
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {count} conflict{'s' if count != 1 else ''}: {summary}",
                _details(
                    causes=[
                        Cause("FieldManagerConflict", f"conflict with {o}", _path_text(p))
                        for o, p in conflicts
                    ]
                ),
            )
        merged = keyed_merge(current, scoped, keys_at, apply=True)
        return self._write(
            target, current, merged, manager, "Apply", applied_leaves=set(leaves), keys_at=keys_at
        )

    def _scope(self, rtype: ResourceType, obj: Json, subresource: str | None) -> Json:
        """The part of ``obj`` a write to the main resource or to /status may change."""
        if not rtype.status_subresource:
            return obj
        if subresource == "status":
            return {"status": obj["status"]} if "status" in obj else {}
        return {k: v for k, v in obj.items() if k != "status"}

    def _write(
        self,
        target: Target,
        current: Json,
        proposed: Json,
        manager: str,
        operation: Literal["Update", "Apply"],
        *,
        applied_leaves: set[FieldPath] | None = None,
        keys_at: Callable[[tuple[str, ...]], tuple[str, ...] | None] | None = None,
        validate: bool = True,
    ) -> Json:
        """Turn a proposed full object into the stored one: keep system metadata, keep what the
        endpoint may not change (status on the main resource, all but status on /status), bump
        generation on spec changes, validate, commit; a no-op write changes nothing."""
        rtype = target.rtype
        new = copy.deepcopy(proposed)
        old_meta = _meta(current)
        meta = dict(_meta(new))
        if target.subresource == "status":
            new = {k: v for k, v in current.items() if k != "status"}
            if "status" in proposed:
                new["status"] = copy.deepcopy(proposed["status"])
            meta = dict(old_meta)
        elif rtype.status_subresource:
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        for system in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "managedFields",
        ):
            if system in old_meta:
                meta[system] = old_meta[system]
            else:
                meta.pop(system, None)
        new["metadata"] = meta
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        if validate:
            self._prepare(rtype, new, target.name or "", status_only=target.subresource == "status")
        else:
            _tidy(new)
        if rtype.tracks_generation and _spec_of(new) != _spec_of(current):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._own(
            rtype,
            current,
            new,
            Ownership(manager, operation, target.subresource, applied_leaves),
            keys_at,
        )
        if _without_times(new) == _without_times(current):
            return current
        return self.store.commit(rtype, "MODIFIED", current, new)

    def _own(
        self,
        rtype: ResourceType,
        old: Json | None,
        new: Json,
        who: Ownership,
        keys_at: Callable[[tuple[str, ...]], tuple[str, ...] | None] | None = None,
    ) -> None:
        """Record field ownership in managedFields: an Update takes the fields it changed from
        everyone; an Apply owns exactly the fields it applied."""
        manager, operation, subresource, applied_leaves = (
            who.manager,
            who.operation,
            who.subresource,
            who.applied,
        )
        if keys_at is None:
            custom = self._crs.get(rtype.plural)
            schema = custom.schema if custom else None

            def keys_at(path: tuple[str, ...]) -> tuple[str, ...] | None:
                return _list_merge_keys(rtype, schema, path)

        def owned_part(obj: Json | None) -> dict[FieldPath, Any]:
            if obj is None:
                return {}
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            meta = {
                k: v
                for k, v in _meta(obj).items()
                if k in ("labels", "annotations", "finalizers", "ownerReferences")
            }
            if meta:
                body["metadata"] = meta
            assert keys_at is not None
            return field_leaves(self._scope(rtype, body, subresource), keys_at)

        before, after = owned_part(old), owned_part(new)
        changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
        removed = set(before) - set(after)
        # Unchanged values applied by several managers stay shared, as in real SSA.
        taken = changed if applied_leaves is None else changed & applied_leaves
        entries: list[Json | None] = []
        mine: set[FieldPath] = set()
        slot: int | None = None
        for entry in _meta(old or {}).get("managedFields") or []:
            owned = _owned_from_fields_v1(entry.get("fieldsV1") or {})
            same = (
                entry.get("manager") == manager
                and entry.get("operation") == operation
                and entry.get("subresource") == subresource
            )
            if same:
                mine, slot = owned - removed, len(entries)
                entries.append(None)
                continue
            owned = owned - removed - (taken if entry.get("subresource") == subresource else set())
            if owned:
                entries.append(
                    {**entry, "fieldsV1": _fields_v1(owned, entry.get("operation") == "Update")}
                )
        mine = set(applied_leaves) if applied_leaves is not None else (mine | changed)
        if mine:
            entry = self._entry(rtype, manager, operation, subresource, mine)
            if slot is None:
                entries.append(entry)
            else:
                entries[slot] = entry
        new["metadata"]["managedFields"] = [e for e in entries if e is not None]

    def _entry(
        self,
        rtype: ResourceType,
        manager: str,
        operation: str,
        subresource: str | None,
        fields: set[FieldPath],
    ) -> Json:
        entry: Json = {
            "manager": manager,
            "operation": operation,
            "apiVersion": rtype.api_version,
            "time": _now_seconds(),
            "fieldsType": "FieldsV1",
            "fieldsV1": _fields_v1(fields, operation == "Update"),
        }
        if subresource:
            entry["subresource"] = subresource
        return entry

    def _delete(self, request: _Request, target: Target) -> Json:
        rtype = target.rtype
        current = self._current(target)
        options = request.json() if request.body else None
        preconditions = (options or {}).get("preconditions") or {}
        if preconditions.get("resourceVersion") not in (None, _meta(current)["resourceVersion"]):
            raise self._conflict(rtype, target.name or "")
        if preconditions.get("uid") not in (None, _meta(current)["uid"]):
            raise self._conflict(rtype, target.name or "")
        self.store.commit(rtype, "DELETED", current, current)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": _details(target.name, rtype.group, rtype.plural, _meta(current)["uid"]),
        }


# --------------------------------------------------------------------------------------------
# Module helpers used above
# --------------------------------------------------------------------------------------------

_MISSING: Final = object()
_VERSION: Final = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.2-abuse-sidecar-test",
    "platform": "linux/amd64",
}


def _continue_token(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _without_type(obj: Mapping[str, Any]) -> Json:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def _tidy(obj: Json) -> None:
    """Empty metadata maps and lists are omitted, as Go's ``omitempty`` does."""
    meta = _meta(obj)
    for key in ("labels", "annotations", "finalizers", "ownerReferences"):
        if key in meta and not meta[key]:
            del meta[key]


def _spec_of(obj: Mapping[str, Any]) -> Json:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _without_times(obj: Mapping[str, Any]) -> Json:
    out = copy.deepcopy(dict(obj))
    for entry in _meta(out).get("managedFields") or []:
        entry.pop("time", None)
    return out


def _peer_closed(connection: socket.socket) -> bool:
    """True once the client closed its end (readable with EOF, or an error)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        if isinstance(connection, ssl.SSLSocket):
            return connection.pending() == 0 and connection.recv(1) == b""
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _default_service(obj: Json, cluster_ips: Iterator[str]) -> None:
    spec = dict(obj.get("spec") or {})
    ports = []
    for given in spec.get("ports") or []:
        port = dict(given)
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        ports.append(
            _ordered(port, ("name", "protocol", "appProtocol", "port", "targetPort", "nodePort"))
        )
    spec["ports"] = ports
    spec.setdefault("type", "ClusterIP")
    if "clusterIP" not in spec:
        spec["clusterIP"] = next(cluster_ips)
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    obj["spec"] = _ordered(
        spec,
        (
            "ports",
            "selector",
            "clusterIP",
            "clusterIPs",
            "type",
            "sessionAffinity",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ),
    )
    obj.setdefault("status", {"loadBalancer": {}})


def _json_path(obj: Any, expression: str) -> Any:
    """The printer-column JSONPath subset: ``.a.b`` and ``.a[?(@.k=="v")].b``."""
    node = obj
    for step in re.findall(
        r"\.([A-Za-z0-9_-]+)(\[\?\(@\.[A-Za-z0-9_-]+==\"[^\"]*\"\)\])?", expression
    ):
        name, filter_ = step
        node = node.get(name) if isinstance(node, dict) else None
        if filter_ and isinstance(node, list):
            key, value = re.findall(r"@\.([A-Za-z0-9_-]+)==\"([^\"]*)\"", filter_)[0]
            node = next((i for i in node if isinstance(i, dict) and i.get(key) == value), None)
        if node is None:
            return None
    return node


def _age(timestamp: str) -> str:
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
