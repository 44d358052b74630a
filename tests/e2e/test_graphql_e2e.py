"""Issue 6 through real Envoy: GraphQL limits and cost on the request body.

Envoy buffers the body of ``/graphql`` only (``graphql_paths``) and sends it to
the sidecar; refusals are 400s with a GraphQL-shaped body and never reach the
application, allowed requests reach it with their body byte for byte.

Expected costs are worked out by hand in the comments (docs/graphql-cost.md,
section 4, without a schema): a connection costs 2 + size × (1 + one item's
selection), an object 1, a leaf 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from graphql import get_introspection_query

from sidecar.envoy_config import BodySettings
from tests.harness.envoy import EnvoyProcess
from tests.harness.sidecar import SidecarProcess
from tests.harness.stack import Stack
from tests.harness.upstream import UpstreamServer
from tests.unit.graphql.graphql_examples import COMPLEX, SIMPLE

pytestmark = pytest.mark.e2e

HOST = "api.github.test"
LOCKED_HOST = "locked.github.test"

POLICIES = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: api, namespace: gh}}
spec:
  hosts: [{host}]
  mode: {mode}
  graphql:
    paths: [/graphql]
---
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: locked, namespace: gh}}
spec:
  hosts: [{locked_host}]
  graphql:
    paths: [/graphql]
    introspection: deny
"""

# viewer (object, 1) + repositories (connection, 50) of
#   name (0) + issues (connection, 10) of title, bodyHTML (0); totalCount is free
SIMPLE_COST = 1 + (2 + 50 * (1 + (2 + 10 * (1 + 0))))
SIMPLE_NODES = 50 + 50 * 10
# viewer + repositories(50) of pullRequests(20) and issues(20), each item with
# comments(10), + followers(10)
_COMMENTS = 2 + 10 * (1 + 0)
COMPLEX_COST = 1 + (2 + 50 * (1 + 2 * (2 + 20 * (1 + _COMMENTS)))) + (2 + 10 * (1 + 0))
DEFAULT_MAX_COST = 1000
DEFAULT_MAX_BODY_BYTES = 65536
ENVOY_BUFFER = BodySettings().max_request_bytes


def _policies(directory: Path, mode: str = "enforce") -> Path:
    (directory / "graphql.yaml").write_text(
        POLICIES.format(host=HOST, locked_host=LOCKED_HOST, mode=mode)
    )
    return directory


def _json(query: str, **fields: Any) -> bytes:
    return json.dumps({"query": query, **fields}).encode()


def _post(
    envoy: EnvoyProcess,
    body: bytes | Iterator[bytes],
    *,
    content_type: str = "application/json",
    path: str = "/graphql",
    host: str = HOST,
) -> httpx.Response:
    return httpx.post(
        envoy.url(path),
        content=body,
        headers={"host": host, "content-type": content_type},
        timeout=20,
    )


def _refusal(response: httpx.Response, reason: str, code: str) -> dict[str, Any]:
    """The ``extensions`` of a GraphQL-shaped 400 refusal, after checking its shape."""
    assert response.status_code == 400, response.text
    assert response.headers["x-abuse-reason"] == reason
    assert response.headers["content-type"] == "application/json"
    errors = response.json()["errors"]
    assert len(errors) == 1
    assert isinstance(errors[0]["message"], str)
    assert errors[0]["message"]
    extensions: dict[str, Any] = errors[0]["extensions"]
    assert extensions["code"] == code
    return extensions


def _too_complex(response: httpx.Response) -> dict[str, Any]:
    return _refusal(response, "graphql_too_complex", "GRAPHQL_TOO_COMPLEX")


def _start(
    stack: Stack, tmp_path: Path, mode: str = "enforce", **envoy: Any
) -> tuple[UpstreamServer, SidecarProcess, EnvoyProcess]:
    app = stack.upstream()
    sidecar = stack.sidecar(policies=[_policies(tmp_path, mode)])
    return app, sidecar, stack.envoy(sidecar, app, **envoy)


def _decision_lines(metrics: str) -> str:
    return "\n".join(
        line for line in metrics.splitlines() if line.startswith("abuse_sidecar_decisions_total{")
    )


def _graphql_requests(app: UpstreamServer) -> int:
    return len(app.requests_to("/graphql"))


def test_githubs_simple_query_passes_with_its_body_intact(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)
    body = _json(SIMPLE)

    response = _post(envoy, body)

    assert response.status_code == 200, response.text
    assert response.json()["headers"]["x-abuse-policy"] == "gh/api"
    assert "x-abuse-shadow" not in response.json()["headers"]
    (seen,) = app.requests_to("/graphql")
    assert seen.method == "POST"
    assert seen.body == body
    assert SIMPLE_COST <= DEFAULT_MAX_COST  # the premise: 653 under the default maxCost


def test_githubs_complex_query_is_refused_before_the_upstream(stack: Stack, tmp_path: Path) -> None:
    app, sidecar, envoy = _start(stack, tmp_path)

    extensions = _too_complex(_post(envoy, _json(COMPLEX)))

    assert extensions["limit"] == "maxCost"
    assert extensions["cost"] == COMPLEX_COST == 26265
    assert extensions["maxCost"] == DEFAULT_MAX_COST
    assert _graphql_requests(app) == 0
    assert (
        'abuse_sidecar_decisions_total{decision="deny",policy="gh/api",'
        'reason="graphql_too_complex"} 1.0' in sidecar.metrics()
    )


def test_attack_shapes_are_refused(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)

    depth_bomb = "query { " + "node { " * 30 + "id" + " }" * 30 + " }"
    extensions = _too_complex(_post(envoy, _json(depth_bomb)))
    assert extensions["limit"] == "maxDepth"
    assert extensions["depth"] == 31
    assert extensions["maxDepth"] == 12

    # Deeper than graphql-core parses at all: still a depth refusal, not a crash.
    abyss = "{ " + "a { " * 1000 + "b" + " }" * 1000 + " }"
    extensions = _too_complex(_post(envoy, _json(abyss)))
    assert extensions["limit"] == "maxDepth"

    aliases = " ".join(f"a{i}: login" for i in range(1000))
    extensions = _too_complex(_post(envoy, _json(f"{{ viewer {{ {aliases} }} }}")))
    assert extensions["limit"] == "maxAliases"
    assert extensions["aliases"] == 1000
    assert extensions["maxAliases"] == 15

    # The cost that 100,000 items would have: 1 + 2 + 100,000 * (1 + 0).
    huge_list = "{ viewer { repositories(first: 100000) { nodes { name } } } }"
    extensions = _too_complex(_post(envoy, _json(huge_list)))
    assert extensions["limit"] == "maxListSize"
    assert extensions["listSize"] == 100_000
    assert extensions["maxListSize"] == 100
    assert extensions["cost"] == 1 + 2 + 100_000
    assert extensions["maxCost"] == DEFAULT_MAX_COST

    assert _graphql_requests(app) == 0


def test_a_list_size_smuggled_through_variables_is_refused(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)
    query = "query Repos($n: Int!) { viewer { repositories(first: $n) { nodes { name } } } }"

    # The same document with a harmless value first: its analysis is cached, and
    # the cache must not hand that verdict to the smuggled value.
    assert _post(envoy, _json(query, variables={"n": 10})).status_code == 200
    extensions = _too_complex(_post(envoy, _json(query, variables={"n": 100_000})))
    assert extensions["limit"] == "maxListSize"
    assert extensions["listSize"] == 100_000
    # As a JSON-encoded string of variables and as a float, as some clients send them.
    smuggled = _json(query, variables=json.dumps({"n": 1e5}))
    assert _too_complex(_post(envoy, smuggled))["listSize"] == 100_000
    defaulted = "query ($n: Int = 100000) { viewer { repositories(first: $n) { nodes { id } } } }"
    assert _too_complex(_post(envoy, _json(defaulted)))["listSize"] == 100_000

    assert _graphql_requests(app) == 1


def test_circular_fragments_and_unreadable_bodies_are_invalid(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)

    cycle = """
    query { viewer { ...A } }
    fragment A on User { login ...B }
    fragment B on User { name ...A }
    """
    extensions = _refusal(_post(envoy, _json(cycle)), "graphql_invalid", "GRAPHQL_INVALID")
    assert set(extensions) == {"code"}

    not_json = _post(envoy, b'{"query": "{ viewer { login } }"')
    _refusal(not_json, "graphql_invalid", "GRAPHQL_INVALID")
    syntax = _post(envoy, _json("{ viewer { login }"))
    _refusal(syntax, "graphql_invalid", "GRAPHQL_INVALID")

    assert _graphql_requests(app) == 0


def test_introspection_is_refused_only_where_the_policy_denies_it(
    stack: Stack, tmp_path: Path
) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)
    # The standard introspection query nests deeper than maxDepth: it is exempt.
    introspection = _json(get_introspection_query(descriptions=True))

    allowed = _post(envoy, introspection)
    assert allowed.status_code == 200, allowed.text

    refused = _too_complex(_post(envoy, introspection, host=LOCKED_HOST))
    assert refused["limit"] == "introspection"
    hidden = _post(envoy, _json('{ viewer { __type(name: "User") { name } } }'), host=LOCKED_HOST)
    assert _too_complex(hidden)["limit"] == "introspection"
    typename = _post(envoy, _json("{ viewer { __typename login } }"), host=LOCKED_HOST)
    assert typename.status_code == 200, typename.text

    assert _graphql_requests(app) == 2


def test_batches_are_checked_per_operation_and_as_a_whole(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)
    small = {"query": "query Me { viewer { login } }", "operationName": "Me"}

    pair = json.dumps([{"query": SIMPLE}, small]).encode()
    passed = _post(envoy, pair)
    assert passed.status_code == 200, passed.text
    assert app.requests_to("/graphql")[-1].body == pair

    # Each SIMPLE passes alone; two of them sum over maxCost.
    twice = json.dumps([{"query": SIMPLE}, {"query": SIMPLE}]).encode()
    extensions = _too_complex(_post(envoy, twice))
    assert extensions["limit"] == "maxCost"
    assert extensions["cost"] == 2 * SIMPLE_COST
    assert extensions["maxCost"] == DEFAULT_MAX_COST

    # One operation over a limit refuses the whole batch.
    deep = "{ " + "node { " * 20 + "id" + " }" * 20 + " }"
    hidden = json.dumps([small, {"query": deep}]).encode()
    assert _too_complex(_post(envoy, hidden))["limit"] == "maxDepth"

    # Many cheap operations, each fine alone: the batch's tokens are summed
    # ({ viewer { login } } is 6 tokens).
    flood = json.dumps([{"query": "{ viewer { login } }"}] * 1000).encode()
    assert len(flood) < DEFAULT_MAX_BODY_BYTES
    extensions = _too_complex(_post(envoy, flood))
    assert extensions["limit"] == "maxTokens"
    assert extensions["tokens"] == 6 * 1000
    assert extensions["maxTokens"] == 5000

    assert _graphql_requests(app) == 1


def test_application_graphql_bodies(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)

    document = SIMPLE.encode()
    passed = _post(envoy, document, content_type="application/graphql")
    assert passed.status_code == 200, passed.text
    (seen,) = app.requests_to("/graphql")
    assert seen.body == document

    refused = _post(envoy, COMPLEX.encode(), content_type="application/graphql; charset=utf-8")
    assert _too_complex(refused)["cost"] == COMPLEX_COST
    assert _graphql_requests(app) == 1


def test_get_with_query_parameters(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)

    def get(query: str, **params: str) -> httpx.Response:
        url = envoy.url("/graphql?" + urlencode({"query": query, **params}))
        return httpx.get(url, headers={"host": HOST}, timeout=20)

    passed = get(SIMPLE)
    assert passed.status_code == 200, passed.text
    assert _too_complex(get(COMPLEX))["cost"] == COMPLEX_COST
    query = "query ($n: Int) { viewer { repositories(first: $n) { nodes { id } } } }"
    assert _too_complex(get(query, variables='{"n": 100000}'))["limit"] == "maxListSize"
    # A GraphiQL page (no query at all) has nothing to check.
    assert httpx.get(envoy.url("/graphql"), headers={"host": HOST}).status_code == 200

    assert [r.method for r in app.requests_to("/graphql")] == ["GET", "GET"]
    assert app.requests_to("/graphql")[0].query == urlencode({"query": SIMPLE})


def test_bodies_over_max_body_bytes_are_refused(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)
    # A valid, cheap query padded with whitespace (no tokens) past maxBodyBytes.
    padded = _json(SIMPLE + " " * DEFAULT_MAX_BODY_BYTES)
    assert DEFAULT_MAX_BODY_BYTES < len(padded) < ENVOY_BUFFER

    extensions = _too_complex(_post(envoy, padded))

    assert extensions["limit"] == "maxBodyBytes"
    assert extensions["bodyBytes"] == len(padded)
    assert extensions["maxBodyBytes"] == DEFAULT_MAX_BODY_BYTES
    assert _graphql_requests(app) == 0


def test_bodies_over_envoys_buffer_get_envoys_413(stack: Stack, tmp_path: Path) -> None:
    # allow_partial_message: false (our default): Envoy refuses what it cannot
    # buffer whole and never calls the sidecar, announced length or not.
    app, sidecar, envoy = _start(stack, tmp_path)
    huge = _json(SIMPLE + " " * ENVOY_BUFFER)

    announced = _post(envoy, huge)
    assert announced.status_code == 413
    assert "x-abuse-reason" not in announced.headers

    chunked = _post(envoy, iter([huge[:1000], huge[1000:]]))
    assert chunked.status_code == 413

    assert _graphql_requests(app) == 0
    assert 'policy="gh/api"' not in _decision_lines(sidecar.metrics())


def test_truncated_bodies_from_a_partial_buffer_are_refused(stack: Stack, tmp_path: Path) -> None:
    # allow_partial_message: true with a buffer smaller than maxBodyBytes (a
    # misconfiguration): Envoy sends the first bytes and marks them partial; the
    # sidecar must not analyse a prefix and let the rest through.
    buffer = 4096
    partial = BodySettings(max_request_bytes=buffer, allow_partial_message=True)
    app, _sidecar, envoy = _start(stack, tmp_path, body=partial)

    small = _json(SIMPLE)
    assert len(small) < buffer
    assert _post(envoy, small).status_code == 200

    # Cheap and valid as a whole, larger than Envoy's buffer, under maxBodyBytes.
    padded = _json(SIMPLE + " " * 2 * buffer)
    assert buffer < len(padded) < DEFAULT_MAX_BODY_BYTES
    for body in (padded, iter([padded[:100], padded[100:]])):
        extensions = _too_complex(_post(envoy, body))
        assert extensions["limit"] == "maxBodyBytes"
        assert extensions["bodyBytes"] > DEFAULT_MAX_BODY_BYTES

    assert _graphql_requests(app) == 1


def test_other_paths_of_the_policy_are_not_analysed(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path)
    # Envoy does not even buffer these bodies: larger than its buffer, still passed.
    body = _json(COMPLEX + " " * ENVOY_BUFFER)

    response = _post(envoy, body, path="/rest/search")

    assert response.status_code == 200, response.text
    assert response.json()["headers"]["x-abuse-policy"] == "gh/api"
    (seen,) = app.requests_to("/rest/search")
    assert seen.body == body


def test_shadow_mode_lets_the_complex_query_through_marked(stack: Stack, tmp_path: Path) -> None:
    app, _sidecar, envoy = _start(stack, tmp_path, mode="shadow")
    body = _json(COMPLEX)

    response = _post(envoy, body)

    assert response.status_code == 200, response.text
    assert "x-abuse-reason" not in response.headers
    (seen,) = app.requests_to("/graphql")
    assert seen.headers["x-abuse-shadow"] == "graphql_too_complex"
    assert seen.body == body
