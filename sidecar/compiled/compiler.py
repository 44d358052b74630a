"""AbusePolicy (model) → CompiledPolicy (runtime), done once per policy change.

Each section of the spec is compiled by its step's builder, in contract order.
A builder that rejects its section raises ValueError; that becomes a PolicyError
naming the section, so ``validate`` and the CR status point at the field.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.compiled.dimensions import CompiledKey
from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.resources import Resources
from sidecar.errors import PolicyError, SectionError
from sidecar.model.policy import AbusePolicy
from sidecar.pipeline.step import Step
from sidecar.steps.active_blocks import ActiveBlocksStep, MembershipRule
from sidecar.steps.honeypots import SubjectPeek, build_honeypot_step


def _section(
    policy: AbusePolicy, source: str, path: str, build: Callable[[], Step | None]
) -> Step | None:
    try:
        return build()
    except SectionError as exc:  # names the exact field (spec.identity.jwt.jwks.keys[1].kty)
        raise PolicyError(source, None, exc.field_path, exc.message) from exc
    except ValueError as exc:
        raise PolicyError(source, None, path, str(exc)) from exc


def compile_policy(policy: AbusePolicy, source: str, resources: Resources) -> CompiledPolicy:
    spec = policy.spec
    pid = policy.id
    steps: list[Step] = []

    identity_step: Step | None = None
    if spec.identity is not None:
        from sidecar.steps.identity import build_identity_step

        identity = spec.identity
        identity_step = _section(
            policy,
            source,
            "spec.identity",
            lambda: build_identity_step(
                pid, identity, jwks=resources.jwks, secret_keys=resources.secret_keys
            ),
        )
    peek: SubjectPeek | None = getattr(identity_step, "peek_subject", None)

    if spec.honeypots is not None:
        honeypots = spec.honeypots
        step = _section(
            policy, source, "spec.honeypots", lambda: build_honeypot_step(pid, honeypots, peek)
        )
        if step is not None:
            steps.append(step)

    if spec.ip_reputation is not None:
        from sidecar.steps.ip_reputation import build_ip_reputation_step

        reputation = spec.ip_reputation
        step = _section(
            policy,
            source,
            "spec.ipReputation",
            lambda: build_ip_reputation_step(pid, reputation, resources.geoip),
        )
        if step is not None:
            steps.append(step)

    if identity_step is not None:
        steps.append(identity_step)

    if spec.graphql is not None:
        from sidecar.steps.graphql import build_graphql_step

        graphql = spec.graphql
        step = _section(policy, source, "spec.graphql", lambda: build_graphql_step(pid, graphql))
        if step is not None:
            steps.append(step)

    budget = spec.graphql.cost_budget if spec.graphql is not None else None
    if spec.rate_limits or budget is not None:
        from sidecar.steps.rate_limits import build_rate_limit_step

        limits = spec.rate_limits
        step = _section(
            policy, source, "spec.rateLimits", lambda: build_rate_limit_step(pid, limits, budget)
        )
        if step is not None:
            steps.append(step)

    if spec.cohorts:
        from sidecar.steps.cohorts import build_cohort_step

        cohorts = spec.cohorts
        notifications = spec.notifications
        step = _section(
            policy,
            source,
            "spec.cohorts",
            lambda: build_cohort_step(pid, cohorts, notifications, resources.notifier),
        )
        if step is not None:
            steps.append(step)

    memberships = tuple(
        MembershipRule(c.name, CompiledKey.compile([c.by]), c.action) for c in spec.cohorts
    )
    honeypot_blocks = spec.honeypots is not None and bool(spec.honeypots.paths)
    active: Step | None = None
    if honeypot_blocks or memberships:
        active = ActiveBlocksStep(pid, honeypot_blocks, memberships)

    return CompiledPolicy(
        id=pid,
        generation=policy.metadata.generation,
        source=source,
        shadow=spec.mode == "shadow",
        failure_closed=spec.failure_mode == "closed",
        xff_trusted_hops=spec.client_ip.xff_trusted_hops,
        hosts=tuple(spec.hosts),
        active_blocks=active,
        steps=tuple(steps),
        wants_body=spec.graphql is not None,
        counts_responses=any(cohort.response_codes for cohort in spec.cohorts),
        spec=policy.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
    )
