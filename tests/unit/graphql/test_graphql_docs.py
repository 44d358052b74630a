"""Every worked example in docs/graphql-cost.md, measured: the page cannot drift."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.graphql.analysis import Analyser
from sidecar.graphql.limits import Limits
from sidecar.graphql.schema import build_cost_schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "graphql-cost.md"
MEASURED = re.compile(r"^\*\*Measured:\*\* (?P<pairs>.+)$")
FENCE = re.compile(r"^```(?P<info>.*)$")
REPORT_NAMES = {
    "cost": "cost",
    "depth": "depth",
    "aliases": "aliases",
    "rootFields": "root_fields",
    "directives": "directives",
    "tokens": "tokens",
    "githubNodes": "github_nodes",
    "githubPoints": "github_points",
    "listSize": "max_list_size",
}


@dataclass
class Example:
    title: str
    blocks: list[tuple[str, str]] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)


def read_examples() -> tuple[str, list[Example]]:
    schema = ""
    examples: list[Example] = []
    current: Example | None = None
    fence: tuple[str, list[str]] | None = None
    for line in DOC.read_text().splitlines():
        match = FENCE.match(line)
        if match and fence is None:
            fence = (match["info"].strip(), [])
            continue
        if match and fence is not None:
            info, lines = fence
            text = "\n".join(lines)
            if info == "graphql schema":
                schema = text
            elif current is not None:
                current.blocks.append((info, text))
            fence = None
            continue
        if fence is not None:
            fence[1].append(line)
            continue
        if line.startswith("### "):
            current = Example(line[4:].strip())
            examples.append(current)
            continue
        measured = MEASURED.match(line)
        if measured and current is not None:
            for pair in measured["pairs"].split(", "):
                name, value = (part.strip() for part in pair.split("="))
                current.expected[name] = value
    return schema, [example for example in examples if example.expected]


SCHEMA_TEXT, EXAMPLES = read_examples()


def test_the_page_has_its_examples() -> None:
    assert SCHEMA_TEXT
    assert len(EXAMPLES) >= 15
    assert any(example.title.startswith("4. GitHub") for example in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.title for example in EXAMPLES])
def test_worked_example(example: Example) -> None:
    queries = [text for info, text in example.blocks if info == "graphql"]
    assert len(queries) == 1, f"{example.title}: one graphql block expected"
    expected = dict(example.expected)
    schema = build_cost_schema(SCHEMA_TEXT) if expected.pop("mode", "") == "schema" else None
    verdict = expected.pop("verdict")
    analysis = Analyser(Limits(), schema).analyse(queries[0])
    if verdict == "allow":
        assert analysis.problem is None, analysis.problem
    else:
        assert analysis.problem is not None, f"{example.title}: expected {verdict}"
        assert f"graphql.{analysis.problem.limit}" == verdict
    for name, value in expected.items():
        assert getattr(analysis.measurements, REPORT_NAMES[name]) == int(value), name
