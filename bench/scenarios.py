"""Benchmark scenarios: what the sidecar is loaded with and what wrk sends.

A scenario is a policy set plus a request shape. Add one by calling
``register(Scenario(...))`` below (a later issue adds ``jwt``, ``ratelimit``,
...); ``bench/run.py --scenario NAME`` picks it up. A scenario's traffic must be
*allowed* (2xx): a benchmark full of denials measures something else, and the
runner reports non-2xx answers as errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
POLICIES_DIR = BENCH_DIR / "policies"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    """One sentence for the report: what is bound and what each request exercises."""
    policies: tuple[Path, ...]
    default_policy: str | None = None
    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    lua: str | Callable[[], str] = ""
    """Extra wrk Lua (e.g. a ``request`` function varying each request), or a function
    returning it, called once per run when the script is written (tokens that must
    not expire, data too costly to build on import); the runner appends its own
    ``done`` reporter, so do not define ``done``."""
    sidecar_args: tuple[str, ...] = ()
    needs_redis: bool = False
    throughput_target: float | None = 0.80
    """The issue's target for B/A, or None when the figure is only reported."""
    """Start a redis-server and pass ``--redis-url`` to the sidecar."""


SCENARIOS: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    if scenario.name in SCENARIOS:
        raise ValueError(f"scenario {scenario.name!r} registered twice")
    SCENARIOS[scenario.name] = scenario
    return scenario


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def request_lua(scenario: Scenario) -> str:
    """wrk's request setup for ``scenario`` (method, path, headers, body, extra Lua)."""
    lines = [
        f"wrk.method = {_lua_string(scenario.method)}",
        f"wrk.path = {_lua_string(scenario.path)}",
    ]
    for name, value in scenario.headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if scenario.body is not None:
        lines.append(f"wrk.body = {_lua_string(scenario.body)}")
    extra = scenario.lua() if callable(scenario.lua) else scenario.lua
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


register(
    Scenario(
        name="honeypots",
        description=(
            "one policy bound to every request with honeypots only; "
            "plain GET / (allowed: block lookup + honeypot match + OK with upstream headers)"
        ),
        policies=(POLICIES_DIR / "honeypots.yaml",),
        default_policy="bench/honeypots",
    )
)


def _jwt_lua(kind: str) -> Callable[[], str]:
    def build() -> str:
        from bench import jwt_traffic  # signs tokens: only when the scenario runs

        return jwt_traffic.same_token_lua() if kind == "same" else jwt_traffic.fresh_tokens_lua()

    return build


register(
    Scenario(
        name="jwt",
        description=(
            "one policy bound to every request requiring a JWT (inline RS256 key); "
            "GET / with the same valid token on every request, as real clients send it "
            "(verified once, then answered from the verified-token cache)"
        ),
        policies=(POLICIES_DIR / "jwt.yaml",),
        default_policy="bench/jwt",
        lua=_jwt_lua("same"),
        throughput_target=0.75,
    )
)

register(
    Scenario(
        name="jwt-fresh",
        description=(
            "the jwt policy; GET / with a different valid RS256 token on every request "
            "(20,000 signed up front and cycled so that none is still in the "
            "verified-token cache: every request is parsed and RSA-verified)"
        ),
        policies=(POLICIES_DIR / "jwt.yaml",),
        default_policy="bench/jwt",
        lua=_jwt_lua("fresh"),
        throughput_target=None,
    )
)


def _github_simple_query_body() -> str:
    from tests.unit.graphql.graphql_examples import SIMPLE

    return json.dumps({"query": SIMPLE})


register(
    Scenario(
        name="graphql",
        description=(
            "one policy bound to every request with spec.graphql (default limits) on "
            "/graphql; POST /graphql with GitHub's documented simple query as JSON "
            "(Envoy sends the body; the same body on every request, so after the first "
            "the analysis is answered from the cache, as for repeated production operations)"
        ),
        policies=(POLICIES_DIR / "graphql.yaml",),
        default_policy="bench/graphql",
        method="POST",
        path="/graphql",
        headers={"content-type": "application/json"},
        body=_github_simple_query_body(),
        throughput_target=None,
    )
)

register(
    Scenario(
        name="ratelimit",
        description=(
            "one policy bound to every request with three rate limits by ip (sliding_window, "
            "token_bucket, fixed_window) and a cohort counting every request, in Redis "
            "(`--redis-url`, failureMode closed); plain GET / from one client, always "
            "allowed (limits far above the load): one EVALSHA per Check that checks the "
            "cohort membership, checks and consumes the three limits and counts the cohort, "
            "and RateLimit headers on every response"
        ),
        policies=(POLICIES_DIR / "ratelimit.yaml",),
        default_policy="bench/ratelimit",
        needs_redis=True,
        throughput_target=None,
    )
)
