"""Issue 5 through real Envoy and a real redis-server: rate limits, their headers,
plans, risk scaling, Redis failures and recovery, and blocks shared by replicas.

Every test gets its own ``redis-server`` on a free loopback port (``redis``
fixture), so a test can stop, freeze, flush or restart it. The sidecars are
separate ``serve`` processes sharing that Redis; "two replicas" means two of
them as endpoints of one Envoy cluster, which Envoy load-balances round robin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.stores.redis import SCRIPT, SCRIPT_SHA
from tests.harness.envoy import EnvoyProcess
from tests.harness.sidecar import SidecarProcess, sidecar_command
from tests.harness.stack import Stack
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HEADER = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: {name}, namespace: rl}}
spec:
  hosts: [{name}.example.test]
"""


def _policy(tmp_path: Path, name: str, spec: str) -> Path:
    """Write one AbusePolicy ``rl/<name>`` bound to ``<name>.example.test``."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEADER.format(name=name) + spec)
    return path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    directory = tmp_path / "redis"
    directory.mkdir()
    with RedisServer(directory) as server:
        yield server


# -- RateLimit headers (draft-ietf-httpapi-ratelimit-headers-11) --------------------------------

# An RFC 9651 List whose Items are Strings with Integer parameters: all the draft
# allows for these fields apart from ``qu`` (a String) and ``pk`` (a Byte Sequence),
# neither of which the sidecar sends.
_ITEM = re.compile(
    r'"(?P<name>(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"'
    r"(?P<params>(?:;[a-z*][a-z0-9_.*-]*=-?[0-9]{1,15})*)"
)
_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def sf_list(value: str) -> list[tuple[str, dict[str, int]]]:
    """Parse a RateLimit / RateLimit-Policy field value strictly; fail on anything else."""
    items: list[tuple[str, dict[str, int]]] = []
    text = value.strip(" ")
    position = 0
    while True:
        item = _ITEM.match(text, position)
        assert item is not None, f"not a structured-field list of strings: {value!r}"
        params: dict[str, int] = {}
        for param in item["params"].split(";")[1:]:
            key, _, number = param.partition("=")
            assert key not in params, f"parameter {key!r} twice in {value!r}"
            params[key] = int(number)
        items.append((re.sub(r"\\(.)", r"\1", item["name"]), params))
        position = item.end()
        if position == len(text):
            return items
        separator = _SEPARATOR.match(text, position)
        assert separator is not None, f"junk after an item in {value!r}"
        position = separator.end()


def quota_policies(response: httpx.Response) -> dict[str, tuple[int, int]]:
    """``RateLimit-Policy``: {policy name: (q, w)}, checked against draft section 3.1."""
    found: dict[str, tuple[int, int]] = {}
    for name, params in sf_list(response.headers["ratelimit-policy"]):
        assert set(params) <= {"q", "w"}, params
        assert params["q"] >= 0, "q: a non-negative Integer (3.1.1)"
        assert params["w"] > 0, "w: a non-negative, non-zero Integer (3.1.3)"
        assert name not in found
        found[name] = (params["q"], params["w"])
    return found


def service_limits(response: httpx.Response) -> dict[str, tuple[int, int]]:
    """``RateLimit``: {policy name: (r, t)}, checked against draft section 4.1."""
    found: dict[str, tuple[int, int]] = {}
    for name, params in sf_list(response.headers["ratelimit"]):
        assert set(params) <= {"r", "t"}, params
        assert params["r"] >= 0, "r: a non-negative Integer (4.1.1)"
        assert params["t"] >= 0, "t: a non-negative Integer (4.1.2)"
        assert name not in found
        found[name] = (params["r"], params["t"])
    return found


def retry_after(response: httpx.Response) -> int:
    value = response.headers["retry-after"]
    assert value.isdigit(), f"Retry-After in delay-seconds: {value!r}"
    return int(value)


def assert_rate_limited(response: httpx.Response, policy: str, rule: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["x-abuse-reason"] == "rate_limited"
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 429
    assert problem["policy"] == policy
    assert problem["rule"] == rule
    assert problem["type"].endswith("/rate_limited")
    assert retry_after(response) >= 1
    # Draft section 6: Retry-After never points before the end of the effective window.
    r, t = service_limits(response)[rule]
    assert r == 0
    assert retry_after(response) >= t
    assert rule in quota_policies(response)


# -- requests ------------------------------------------------------------------------------


def _client(host: str, timeout: float = 10) -> httpx.Client:
    return httpx.Client(headers={"host": host}, timeout=timeout)


def _burst(url: str, host: str, count: int) -> list[httpx.Response]:
    """``count`` requests sent at once, each on its own connection."""

    async def send() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(headers={"host": host}, timeout=10, limits=limits) as client:
            return list(await asyncio.gather(*(client.get(url) for _ in range(count))))

    return asyncio.run(send())


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sidecar_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _readyz(sidecar: SidecarProcess) -> tuple[int, dict[str, Any]]:
    status, body = sidecar.admin_get("/readyz")
    return status, json.loads(body)


def _store_errors(sidecar: SidecarProcess) -> float:
    """``abuse_sidecar_store_errors_total{store="redis"}`` (0 before the first error)."""
    found = re.search(
        r'^abuse_sidecar_store_errors_total\{store="redis"\} (\S+)$', sidecar.metrics(), re.M
    )
    return float(found.group(1)) if found else 0.0


def _decisions(sidecar: SidecarProcess, policy: str) -> dict[str, float]:
    """``abuse_sidecar_decisions_total`` of one policy by ``decision/reason``."""
    counts: dict[str, float] = {}
    pattern = re.compile(r"^abuse_sidecar_decisions_total\{([^}]*)\} (\S+)$", re.M)
    for labels, value in pattern.findall(sidecar.metrics()):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if parsed.get("policy") == policy:
            key = f"{parsed['decision']}/{parsed.get('reason', '')}".rstrip("/")
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


# -- exactly once, across replicas ---------------------------------------------------------

EXACT = """
  rateLimits:
    - {name: sliding, match: {paths: [/sliding]}, by: [ip], limit: 20, period: 1d}
    - {name: bucket, match: {paths: [/bucket]}, by: [ip], limit: 20, period: 1d,
       algorithm: token_bucket, burst: 20}
    - {name: fixed, match: {paths: [/fixed]}, by: [ip], limit: 20, period: 1d,
       algorithm: fixed_window}
"""


def test_forty_concurrent_requests_get_exactly_twenty_through_two_sidecars(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "exact", EXACT)
    # Loaded up front so that every EVALSHA counted below is one Check's round trip
    # (a cold Redis answers the first batch NOSCRIPT, and that batch is sent twice).
    assert redis.command("SCRIPT", "LOAD", SCRIPT.decode()) == SCRIPT_SHA
    replicas = [stack.sidecar(policies=[policy], redis_url=redis.url) for _ in range(2)]
    # Envoy answers allowed requests itself: the Python test upstream's accept
    # queue (5) would drop some of 20 simultaneous connections, and Envoy would
    # answer them 503, hiding what the sidecar decided.
    envoy = stack.envoy([r.grpc_port for r in replicas], None, concurrency=2)
    envoy.wait_for_healthy_endpoints()

    for rule in ("sliding", "bucket", "fixed"):
        checks_before = envoy.requests_per_endpoint()
        evalsha_before = redis.command_calls("evalsha")
        responses = _burst(envoy.url(f"/{rule}"), "exact.example.test", 40)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 20 + [429] * 20, f"{rule}: {statuses}"

        allowed = [r for r in responses if r.status_code == 200]
        denied = [r for r in responses if r.status_code == 429]
        for response in denied:
            assert_rate_limited(response, "rl/exact", rule)
        assert all(quota_policies(r) == {rule: (20, 86_400)} for r in allowed + denied)
        # Each allowed request consumed one unit atomically: it saw a distinct
        # remaining count, from 19 down to 0.
        remaining = sorted(service_limits(r)[rule][0] for r in allowed)
        assert remaining == list(range(20)), f"{rule}: {remaining}"

        # Both replicas decided part of the burst ...
        checks_after = envoy.requests_per_endpoint()
        per_replica = {host: n - checks_before.get(host, 0) for host, n in checks_after.items()}
        assert len(per_replica) == 2, per_replica
        assert all(n > 0 for n in per_replica.values()), per_replica
        # ... and no Check took more than one Redis round trip (requests denied from
        # a replica's over-limit cache take none).
        evalsha = redis.command_calls("evalsha") - evalsha_before
        assert 20 < evalsha <= 40, f"{rule}: {evalsha} EVALSHA for 40 Checks"

    totals: dict[str, float] = {}
    for replica in replicas:
        for key, value in _decisions(replica, "rl/exact").items():
            totals[key] = totals.get(key, 0.0) + value
    assert totals == {"allow": 60.0, "deny/rate_limited": 60.0}


# -- header values -------------------------------------------------------------------------

HEADERS = """
  rateLimits:
    - {name: per-ip, match: {methods: [GET], paths: [/api/**]}, by: [ip], limit: 3, period: 1m}
    - {name: daily, match: {paths: [/api/**]}, by: [ip], limit: 1000, period: 1d,
       algorithm: fixed_window}
"""


def test_ratelimit_headers_on_allowed_and_denied_responses(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "headers", HEADERS)
    app = stack.upstream()
    envoy = stack.envoy(stack.sidecar(policies=[policy], redis_url=redis.url), app)

    with _client("headers.example.test") as client:
        allowed = [client.get(envoy.url("/api/items")) for _ in range(3)]
        denied = client.get(envoy.url("/api/items"))
        unlimited = client.get(envoy.url("/elsewhere"))

    expected_policy = {"per-ip": (3, 60), "daily": (1000, 86_400)}
    for index, response in enumerate(allowed):
        assert response.status_code == 200, response.text
        assert quota_policies(response) == expected_policy
        limits = service_limits(response)
        assert limits["per-ip"][0] == 2 - index
        assert limits["daily"][0] == 999 - index
        assert 0 < limits["per-ip"][1] <= 60
        assert 0 < limits["daily"][1] <= 86_400
        # The headers are for the client: the application does not get them.
        assert "ratelimit" not in response.json()["headers"]

    assert_rate_limited(denied, "rl/headers", "per-ip")
    assert quota_policies(denied) == expected_policy
    # Denied by per-ip: the daily quota was not consumed by the refused request.
    assert service_limits(denied)["daily"][0] == 997
    assert len(app.requests_to("/api/items")) == 3

    # A route no limit matches carries no RateLimit fields.
    assert unlimited.status_code == 200
    assert "ratelimit" not in unlimited.headers
    assert "ratelimit-policy" not in unlimited.headers


TENANTS = """
  rateLimits:
    - {name: per-tenant, by: ["header:x-tenant"], limit: 2, period: 1h}
"""


def test_header_dimension_counts_each_tenant_separately(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "tenants", TENANTS)
    envoy = stack.envoy(stack.sidecar(policies=[policy], redis_url=redis.url), stack.upstream())

    def statuses(tenant: str, count: int) -> list[int]:
        with _client("tenants.example.test") as client:
            return [
                client.get(envoy.url("/"), headers={"x-tenant": tenant}).status_code
                for _ in range(count)
            ]

    assert statuses("acme", 3) == [200, 200, 429]
    assert statuses("globex", 2) == [200, 200]  # same client IP, another tenant
    assert statuses("ACME", 1) == [200]  # header values are compared as sent
    assert statuses("acme", 1) == [429]


# -- plans ---------------------------------------------------------------------------------

API_KEYS = {"k-gold": "gold", "k-free": "free", "k-trial": "trial", "k-basic": None}


def _key(key_id: str) -> str:
    return f"secret-{key_id}-0123456789abcdef"


def _plans_spec() -> str:
    entries = []
    for key_id, plan in API_KEYS.items():
        digest = hashlib.sha256(_key(key_id).encode()).hexdigest()
        entry = {"id": key_id, "sha256": digest, "subject": f"user-{key_id}"}
        if plan is not None:
            entry["plan"] = plan
        entries.append(json.dumps(entry))
    return f"""
  identity:
    required: true
    apiKey: {{in: header, name: x-api-key, keys: [{", ".join(entries)}]}}
  rateLimits:
    - {{name: per-key, by: [api_key], limit: 2, period: 1h,
       plans: {{gold: 5, free: 3, trial: 0}}}}
"""


def test_per_plan_limits_follow_the_api_keys_plan(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "plans", _plans_spec())
    envoy = stack.envoy(stack.sidecar(policies=[policy], redis_url=redis.url), stack.upstream())

    def run(key_id: str, count: int) -> list[httpx.Response]:
        with _client("plans.example.test") as client:
            return [
                client.get(envoy.url("/reports"), headers={"x-api-key": _key(key_id)})
                for _ in range(count)
            ]

    for key_id, limit in (("k-gold", 5), ("k-free", 3), ("k-basic", 2)):
        responses = run(key_id, limit + 1)
        assert [r.status_code for r in responses] == [200] * limit + [429], key_id
        first = responses[0]
        assert first.json()["headers"]["x-abuse-subject"] == f"user-{key_id}"
        plan = API_KEYS[key_id]
        if plan is None:
            assert "x-abuse-plan" not in first.json()["headers"]
        else:
            assert first.json()["headers"]["x-abuse-plan"] == plan
        assert quota_policies(first) == {"per-key": (limit, 3600)}
        assert service_limits(first)["per-key"][0] == limit - 1
        assert_rate_limited(responses[-1], "rl/plans", "per-key")

    # A plan whose limit is 0 may not use the route at all.
    (trial,) = run("k-trial", 1)
    assert trial.status_code == 429
    assert trial.headers["x-abuse-reason"] == "rate_limited"
    assert quota_policies(trial) == {"per-key": (0, 3600)}
    assert retry_after(trial) >= 1


# -- risk scaling --------------------------------------------------------------------------

RISKY_IP, CLEAN_IP = "198.51.100.7", "192.0.2.7"


def test_risk_scaling_lowers_the_limit_for_risky_addresses(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    cidrs = tmp_path / "custom.txt"
    cidrs.write_text("# our own list of suspicious networks\n198.51.100.0/24\n")
    database = tmp_path / "custom.mmdb"
    built = _cli("mmdb", "build", "--out", str(database), "--category", f"custom={cidrs}")
    assert built.returncode == 0, built.stderr
    policy = _policy(
        tmp_path,
        "risk",
        """
  clientIP: {xffTrustedHops: 1}
  ipReputation:
    risk: {custom: 50}
  rateLimits:
    - {name: per-ip, by: [ip], limit: 10, period: 1h, riskScaling: true}
""",
    )
    sidecar = stack.sidecar(policies=[policy], redis_url=redis.url, geoip=[database])
    envoy = stack.envoy(sidecar, stack.upstream())

    def run(ip: str, count: int) -> list[httpx.Response]:
        with _client("risk.example.test") as client:
            return [
                client.get(envoy.url("/"), headers={"x-forwarded-for": ip}) for _ in range(count)
            ]

    risky = run(RISKY_IP, 6)
    # max(1, floor(10 * (100 - 50) / 100)) = 5
    assert [r.status_code for r in risky] == [200] * 5 + [429]
    assert risky[0].json()["headers"]["x-abuse-risk"] == "50"
    assert quota_policies(risky[0]) == {"per-ip": (5, 3600)}
    assert_rate_limited(risky[-1], "rl/risk", "per-ip")

    clean = run(CLEAN_IP, 11)
    assert [r.status_code for r in clean] == [200] * 10 + [429]
    assert clean[0].json()["headers"]["x-abuse-risk"] == "0"
    assert quota_policies(clean[0]) == {"per-ip": (10, 3600)}


# -- Redis failures ------------------------------------------------------------------------


def _failure_spec(mode: str, limit: int) -> str:
    return f"""
  failureMode: {mode}
  rateLimits:
    - {{name: per-ip, by: [ip], limit: {limit}, period: 1h}}
"""


def _answers_in_time(
    client: httpx.Client, envoy: EnvoyProcess, path: str, count: int
) -> list[httpx.Response]:
    """``count`` requests, each answered within Envoy's ext_authz timeout: past it
    Envoy answers 403 itself, so a sidecar waiting on Redis shows as a 403."""
    budget = envoy.config.authz_timeout_ms / 1000
    responses = []
    for _ in range(count):
        started = time.monotonic()
        response = client.get(envoy.url(path))
        elapsed = time.monotonic() - started
        assert response.status_code != 403, "Envoy's own answer: the sidecar took too long"
        assert elapsed < budget, f"answered in {elapsed * 1000:.0f} ms, Envoy waits {budget}s"
        responses.append(response)
    return responses


def _assert_store_unavailable(response: httpx.Response, policy: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["x-abuse-reason"] == "store_unavailable"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["policy"] == policy


def test_failure_closed_answers_503_quickly_and_recovers_when_redis_returns(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "closed", _failure_spec("closed", 100))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[policy], redis_url=redis.url)
    envoy = stack.envoy(sidecar, app)

    with _client("closed.example.test") as client:
        assert client.get(envoy.url("/before")).status_code == 200
        assert _store_errors(sidecar) == 0

        redis.stop()
        for response in _answers_in_time(client, envoy, "/down", 10):
            _assert_store_unavailable(response, "rl/closed")
        assert app.requests_to("/down") == []
        status, ready = _readyz(sidecar)
        assert status == 503, ready
        assert ready["store"] == {"name": "redis", "state": "down"}
        assert any("redis" in reason for reason in ready["reasons"])
        assert _store_errors(sidecar) >= 1

        redis.start()  # same port, empty
        assert _eventually(lambda: client.get(envoy.url("/back")).status_code == 200)
        assert _eventually(lambda: _readyz(sidecar)[0] == 200)
        response = client.get(envoy.url("/back"))
        assert response.status_code == 200
        # Counted in the restarted Redis again, not in a per-process fallback.
        assert service_limits(response)["per-ip"][0] < 99
    assert sidecar.process.alive()


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_frozen_redis_never_hangs_a_request(
    stack: Stack, tmp_path: Path, redis: RedisServer, mode: str
) -> None:
    policy = _policy(tmp_path, mode, _failure_spec(mode, 100))
    sidecar = stack.sidecar(policies=[policy], redis_url=redis.url)
    envoy = stack.envoy(sidecar, stack.upstream())

    with _client(f"{mode}.example.test") as client:
        assert client.get(envoy.url("/")).status_code == 200
        redis.pause()  # connections stay open, nothing answers
        try:
            for response in _answers_in_time(client, envoy, "/frozen", 10):
                if mode == "closed":
                    _assert_store_unavailable(response, "rl/closed")
                else:
                    assert response.status_code == 200, response.text
            assert _readyz(sidecar)[0] == 503
        finally:
            redis.resume()
        assert _eventually(lambda: client.get(envoy.url("/thawed")).status_code == 200)
    assert _eventually(lambda: _readyz(sidecar)[0] == 200)
    assert _store_errors(sidecar) >= 1


def test_failure_open_allows_but_falls_back_to_per_process_limits(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "open", _failure_spec("open", 3))
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[policy], redis_url=redis.url)
    envoy = stack.envoy(sidecar, app)

    with _client("open.example.test") as client:
        assert [client.get(envoy.url("/")).status_code for _ in range(2)] == [200, 200]

        redis.stop()
        # Allowed while Redis is down, but counted in the process: the limit of 3
        # still bites (counting starts afresh: the Redis counts are out of reach).
        during = [client.get(envoy.url("/down")) for _ in range(5)]
        assert [r.status_code for r in during] == [200, 200, 200, 429, 429]
        assert_rate_limited(during[-1], "rl/open", "per-ip")
        assert len(app.requests_to("/down")) == 3
        assert _readyz(sidecar)[0] == 503
        assert _store_errors(sidecar) >= 1

        redis.start()
        # Back on Redis (empty after its restart): the exhausted per-process count
        # no longer applies.
        assert _eventually(lambda: client.get(envoy.url("/back")).status_code == 200)
        assert _eventually(lambda: _readyz(sidecar)[0] == 200)
    assert sidecar.process.alive()


def test_script_flush_mid_run_is_transparent(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "flushed", _failure_spec("closed", 10))
    sidecar = stack.sidecar(policies=[policy], redis_url=redis.url)
    envoy = stack.envoy(sidecar, stack.upstream())

    with _client("flushed.example.test") as client:
        before = [client.get(envoy.url("/")) for _ in range(5)]
        assert redis.command("SCRIPT", "EXISTS", SCRIPT_SHA) == "1"
        assert redis.command("SCRIPT", "FLUSH") == "OK"
        assert redis.command("SCRIPT", "EXISTS", SCRIPT_SHA) == "0"
        after = [client.get(envoy.url("/")) for _ in range(6)]

    assert [r.status_code for r in before + after] == [200] * 10 + [429]
    # The count went on where it was: the script was reloaded, not the state lost.
    assert [service_limits(r)["per-ip"][0] for r in after[:5]] == [4, 3, 2, 1, 0]
    assert redis.command("SCRIPT", "EXISTS", SCRIPT_SHA) == "1"
    assert _store_errors(sidecar) == 0


# -- blocks shared by replicas -------------------------------------------------------------

HONEYPOTS = """
  clientIP: {xffTrustedHops: 1}
  honeypots: {paths: [/.env], blockFor: 1h}
"""
INTRUDER, BYSTANDER = "203.0.113.66", "203.0.113.67"


def test_honeypot_block_is_shared_and_lifted_by_abuse_sidecar_unblock(
    stack: Stack, tmp_path: Path, redis: RedisServer
) -> None:
    policy = _policy(tmp_path, "trap", HONEYPOTS)
    app = stack.upstream()
    replicas = [stack.sidecar(policies=[policy], redis_url=redis.url) for _ in range(2)]
    envoy = stack.envoy([r.grpc_port for r in replicas], app, concurrency=2)
    envoy.wait_for_healthy_endpoints()

    def statuses(ip: str, count: int) -> list[int]:
        # A new connection per request: Envoy spreads them over both replicas.
        return [
            httpx.get(
                envoy.url("/products"),
                headers={"host": "trap.example.test", "x-forwarded-for": ip},
                timeout=10,
            ).status_code
            for _ in range(count)
        ]

    trap = httpx.get(
        envoy.url("/.env"),
        headers={"host": "trap.example.test", "x-forwarded-for": INTRUDER},
        timeout=10,
    )
    assert trap.status_code == 403
    assert trap.headers["x-abuse-reason"] == "honeypot"

    before = envoy.requests_per_endpoint()
    assert statuses(INTRUDER, 8) == [403] * 8
    after = envoy.requests_per_endpoint()
    assert all(after[host] > before.get(host, 0) for host in after), (before, after)
    assert statuses(BYSTANDER, 2) == [200, 200]

    unblocked = _cli("unblock", "--redis-url", redis.url, "--policy", "rl/trap", "--ip", INTRUDER)
    assert unblocked.returncode == 0, unblocked.stderr
    assert INTRUDER in unblocked.stdout
    assert statuses(INTRUDER, 4) == [200] * 4
    assert len(app.requests_to("/products")) == 6
    assert app.requests_to("/.env") == []
