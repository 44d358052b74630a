"""The benchmark's own machinery: wrk script generation, result parsing, the report file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.run import DONE_LUA, INTRO, parse_wrk, run_wrk, write_section
from bench.scenarios import Scenario, request_lua
from tests.harness.upstream import UpstreamServer


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_sends_the_scenario_request_and_reports_parseable_figures(tmp_path: Path) -> None:
    scenario = Scenario(
        name="probe",
        description="",
        policies=(),
        method="POST",
        path="/probe?q=1",
        headers={"x-quoted": 'say "hi"\\there'},
        body="{}",
    )
    script = tmp_path / "wrk.lua"
    script.write_text(request_lua(scenario) + DONE_LUA)

    with UpstreamServer(statuses={"/probe": 201}) as app:
        result = run_wrk(app.url, script, threads=1, connections=1, seconds=1)
        received = app.requests

    # wrk does not count the request in flight when its time is up.
    assert 0 < result.requests <= len(received) <= result.requests + 1
    first = received[0]
    assert (first.method, first.path, first.query) == ("POST", "/probe", "q=1")
    assert first.headers["x-quoted"] == 'say "hi"\\there'
    assert first.body == b"{}"
    assert result.non_2xx == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms


def test_parse_wrk_reads_the_done_line_among_other_output() -> None:
    output = (
        "Running 1s test @ http://x\n  1 threads and 1 connections\n"
        "BENCH_RESULT requests=2000 duration_us=1000000 connect=0 read=1 write=0 status=7 "
        "timeout=2 p50_us=450 p90_us=800 p99_us=1500 mean_us=480.5 max_us=9000\n"
    )
    result = parse_wrk(output)
    assert result.rps == 2000
    assert (result.errors, result.non_2xx) == (3, 7)
    assert (result.p50_ms, result.p99_ms, result.max_ms) == (0.45, 1.5, 9.0)


def test_parse_wrk_without_result_line_says_so() -> None:
    with pytest.raises(RuntimeError, match="no BENCH_RESULT"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_sections_are_replaced_in_place_and_others_kept(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    write_section(doc, "honeypots:workers=1", "## one\nfirst\n")
    write_section(doc, "honeypots:workers=2", "## two\n")
    write_section(doc, "honeypots:workers=1", "## one\nsecond\n")

    text = doc.read_text()
    assert text.startswith(INTRO)
    assert "first" not in text
    assert text.index("## one\nsecond") < text.index("## two")
    assert text.count("<!-- bench:honeypots:workers=1 -->") == 1
