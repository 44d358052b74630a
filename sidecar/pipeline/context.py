"""RequestContext: everything a step may read about one request, built once per Check.

Built by ``server/authz.py`` from an Envoy CheckRequest (and by ``check`` offline),
so steps never see protobuf. Steps also record what they established here
(subject, plan, risk, flags) for later steps and the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


@dataclass(slots=True)
class StepReport:
    """What one step saw and decided: the unit of ``check``/``Explain`` output."""

    step: str
    verdict: str  # allow | deny | skip | shadow | error
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "verdict": self.verdict, **self.details}


@dataclass(slots=True)
class RequestContext:
    method: str
    path: str  # normalised (percent-decoded, dot segments removed, slashes merged, no query)
    raw_path: str  # as Envoy sent it, query included
    query: str  # raw query string, without "?"
    host: str  # lower-case, without port or trailing dot
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    source_ip: str
    source_principal: str = ""  # Envoy's verified client-certificate principal
    context_extensions: Mapping[str, str] = field(default_factory=dict)

    # Established by the pipeline.
    client_ip: str = ""
    subject: str | None = None
    plan: str | None = None
    api_key_id: str | None = None
    risk: int = 0
    ip_categories: tuple[str, ...] = ()
    country: str | None = None
    asn: int | None = None
    flags: list[str] = field(default_factory=list)
    graphql_cost: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    # What a step worked out in its local phase and needs again when it settles,
    # by step name (steps themselves are shared by every request). Created by the
    # first step that needs it: most Checks never do.
    carry: dict[str, Any] | None = None

    # Explanation, filled only when ``explain`` is on (check, Explain, debug logs).
    explain: bool = False
    reports: list[StepReport] = field(default_factory=list)

    _query_params: dict[str, list[str]] | None = None

    def query_params(self) -> dict[str, list[str]]:
        """Query parameters, parsed on first use only (most requests never need them)."""
        if self._query_params is None:
            self._query_params = parse_qs(self.query, keep_blank_values=True)
        return self._query_params

    def query_param(self, name: str) -> str | None:
        values = self.query_params().get(name)
        return values[0] if values else None

    def report(self, step: str, verdict: str, **details: Any) -> None:
        if self.explain:
            self.reports.append(StepReport(step, verdict, details))
