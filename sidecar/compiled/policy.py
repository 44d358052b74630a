"""CompiledPolicy: one AbusePolicy as the engine runs it. Immutable once built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.pipeline.step import Step


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    id: str  # "ns/name"
    generation: int
    source: str  # file path or "kubernetes"
    shadow: bool
    failure_closed: bool
    xff_trusted_hops: int
    hosts: tuple[str, ...]
    # Settled first, built last (needs the subject); None when nothing can be active.
    active_blocks: Step | None
    # In contract order after active blocks: honeypot, IP reputation, identity,
    # GraphQL, rate limits and budget, cohort counting.
    steps: tuple[Step, ...]
    # Envoy must send the body for these paths (GraphQL); informational for config.
    wants_body: bool
    # Some cohort counts upstream responses: Envoy's access log must carry who each
    # request was (the CheckResponse's dynamic metadata), even for allowed requests.
    counts_responses: bool
    spec: dict[str, Any]  # the spec as written, for /policies
