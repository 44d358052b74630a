"""``abuse-sidecar check``: the serving pipeline, offline, on one request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.compiled.hosts import normalize_host
from sidecar.compiled.paths import normalize_path, split_path
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_file, policy_files
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.engine import Engine
from sidecar.server.authz import Authorizer
from sidecar.server.explain import explain
from sidecar.stores.memory import MemoryStore


@dataclass(frozen=True, slots=True)
class OfflineRequest:
    method: str
    path: str
    host: str
    headers: Mapping[str, str]
    ip: str
    body: bytes


async def explain_offline(
    policies: Sequence[Path],
    geoip: Sequence[Path],
    request: OfflineRequest,
    *,
    default_policy: str | None = None,
) -> dict[str, Any]:
    resources = Resources()
    if geoip:
        from sidecar.iprep.mmdb import GeoIpDatabases

        resources.geoip = GeoIpDatabases(list(geoip))
    from sidecar.identity.jwks import JwksRegistry

    jwks = JwksRegistry()
    await jwks.start()
    resources.jwks = jwks
    try:
        return await _explain(policies, resources, request, default_policy)
    finally:
        await jwks.aclose()


async def _explain(
    policies: Sequence[Path],
    resources: Resources,
    request: OfflineRequest,
    default_policy: str | None,
) -> dict[str, Any]:
    registry = PolicyRegistry(resources, default_policy)
    errors: list[str] = []
    for path in policy_files(policies):
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        documents = load_file(path)
        errors.extend(str(d.error) for d in documents if d.error is not None)
        registry.replace_source(f"file:{path}", documents, publish=False)
    snapshot = registry.publish()
    if resources.jwks is not None:
        await resources.jwks.wait_ready(5.0)  # jwksUri keys fetched before judging a token
    errors.extend(s.error for s in snapshot.states if s.error and s.error not in errors)
    if errors:
        raise ValueError("; ".join(errors))
    raw_path, query = split_path(request.path)
    headers = dict(request.headers)
    ctx = RequestContext(
        method=request.method.upper(),
        path=normalize_path(raw_path or "/"),
        raw_path=request.path,
        query=query,
        host=normalize_host(request.host or headers.get("host", "")),
        headers=headers,
        body=request.body,
        source_ip=request.ip,
        explain=True,
    )
    authorizer = Authorizer(registry, Engine(MemoryStore(), MemoryStore()))
    return await explain(authorizer, ctx)
