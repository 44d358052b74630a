"""``abuse-sidecar check --body FILE`` explains the GraphQL step: what it measured and
why it decided, run as a user runs it (the installed console script, in a subprocess).

The expected figures are counted by hand (docs/graphql-cost.md, sections 3 and 4,
without a schema) from GitHub's documented example queries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.graphql.graphql_examples import COMPLEX, POINTS, SIMPLE

HOST = "api.github.test"
POLICY = f"""
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: api, namespace: gh}}
spec:
  hosts: [{HOST}]
  graphql:
    paths: [/graphql]
"""
MEASUREMENTS = (
    "depth",
    "aliases",
    "rootFields",
    "directives",
    "tokens",
    "cost",
    "githubNodes",
    "githubPoints",
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("abuse-sidecar", path=str(Path(sys.executable).parent))
    assert exe, "the console script abuse-sidecar is installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def check(
    policy: Path, body: bytes, path: str = "/graphql", content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    body_file = policy.parent / "body"
    body_file.write_bytes(body)
    result = run(
        "check",
        "--policies",
        str(policy),
        "--body",
        str(body_file),
        "--method",
        "POST",
        "--path",
        path,
        "--host",
        HOST,
        "--header",
        f"content-type: {content_type}",
        "--output",
        "json",
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def graphql_step(out: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in out["steps"] if s["step"] == "graphql"]
    assert isinstance(step, dict)
    return step


def measured(step: dict[str, Any]) -> dict[str, Any]:
    return {name: step[name] for name in MEASUREMENTS}


def test_githubs_simple_query_is_allowed_and_explained(policy: Path) -> None:
    code, out = check(policy, json.dumps({"query": SIMPLE}).encode())

    assert code == 0
    assert out["decision"] == "allow"
    assert out["status"] == 200
    assert out["policy"] == "gh/api"
    step = graphql_step(out)
    assert step["verdict"] == "allow"
    assert measured(step) == {
        # viewer, repositories, edges, node, issues, edges, node, title
        "depth": 8,
        "aliases": 1,  # repository:node
        "rootFields": 1,
        "directives": 0,
        # query { viewer { repositories ( first : 50 ) { edges { repository : node {
        # name issues ( first : 10 ) { totalCount edges { node { title bodyHTML }}}}}}}}
        "tokens": 32 + 8,
        # viewer 1 + repositories 2 + 50 * (1 + issues (2 + 10 * (1 + 0)))
        "cost": 1 + 2 + 50 * (1 + 2 + 10 * 1),
        "githubNodes": 50 + 50 * 10,  # GitHub's documented 550
        "githubPoints": 1,  # (1 + 50) requests / 100, at least 1
    }


def test_githubs_complex_query_is_denied_and_explained(policy: Path) -> None:
    code, out = check(policy, json.dumps({"query": COMPLEX}).encode())

    assert code == 1
    assert out["decision"] == "deny"
    assert out["status"] == 400
    assert out["reason"] == "graphql_too_complex"
    assert out["rule"] == "graphql.maxCost"
    step = graphql_step(out)
    assert step["verdict"] == "deny"
    comments = 2 + 10 * (1 + 0)
    assert measured(step) == {
        # viewer, repositories, edges, node, issues, edges, node, comments, edges, node, bodyHTML
        "depth": 11,
        "aliases": 6,  # repository, pullRequest, comment, issue, comment, follower
        "rootFields": 1,
        "directives": 0,
        # 70 names, numbers, colons and parentheses, 20 selection sets ({ and })
        "tokens": 70 + 2 * 20,
        "cost": 1 + (2 + 50 * (1 + 2 * (2 + 20 * (1 + comments)))) + (2 + 10 * 1),
        # GitHub's documented 22,060 nodes: 50 + 50*20 + 50*20*10 + 50*20 + 50*20*10 + 10
        "githubNodes": 50 + 2 * (50 * 20 + 50 * 20 * 10) + 10,
        # (1 + 50 + 1000 + 50 + 1000 + 1) requests / 100 = 21 (GitHub's documented figure)
        "githubPoints": 21,
    }


def test_githubs_points_example(policy: Path) -> None:
    _code, out = check(policy, json.dumps({"query": POINTS}).encode())

    step = graphql_step(out)
    # GitHub's documented example: 5,101 requests = 51 points; 305,100 nodes.
    assert step["githubPoints"] == (1 + 100 + 100 * 50) // 100 == 51
    assert step["githubNodes"] == 100 + 100 * 50 + 100 * 50 * 60 == 305_100
    assert out["reason"] == "graphql_too_complex"


def test_directives_and_variables_are_counted(policy: Path) -> None:
    query = "query ($full: Boolean!) { viewer { login @include(if: $full) name @skip(if: true) } }"
    code, out = check(policy, json.dumps({"query": query, "variables": {"full": True}}).encode())

    assert code == 0
    assert measured(graphql_step(out)) == {
        "depth": 2,
        "aliases": 0,
        "rootFields": 1,
        "directives": 2,
        # query ( $ full : Boolean ! ) { viewer { login @ include ( if : $ full )
        # name @ skip ( if : true ) } }
        "tokens": 30,
        "cost": 1,
        "githubNodes": 0,
        "githubPoints": 1,
    }


def test_a_list_size_from_variables_is_denied_with_its_rule(policy: Path) -> None:
    query = "query ($n: Int!) { viewer { repositories(first: $n) { nodes { name } } } }"
    code, out = check(policy, json.dumps({"query": query, "variables": {"n": 100000}}).encode())

    assert code == 1
    assert out["rule"] == "graphql.maxListSize"
    step = graphql_step(out)
    assert step["rule"] == "graphql.maxListSize"
    assert step["cost"] == 1 + 2 + 100_000 * (1 + 0)
    assert step["githubNodes"] == 100_000


def test_circular_fragments_are_invalid(policy: Path) -> None:
    cycle = "{ viewer { ...A } } fragment A on User { ...B } fragment B on User { ...A }"
    code, out = check(policy, json.dumps({"query": cycle}).encode())

    assert code == 1
    assert out["status"] == 400
    assert out["reason"] == "graphql_invalid"
    assert graphql_step(out)["verdict"] == "deny"


def test_application_graphql_body(policy: Path) -> None:
    code, out = check(policy, SIMPLE.encode(), content_type="application/graphql")

    assert code == 0
    assert graphql_step(out)["githubNodes"] == 550


def test_other_paths_have_no_graphql_step(policy: Path) -> None:
    code, out = check(policy, json.dumps({"query": COMPLEX}).encode(), path="/rest/search")

    assert code == 0
    assert out["policy"] == "gh/api"
    assert [s for s in out["steps"] if s["step"] == "graphql"] == []
