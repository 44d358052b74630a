"""The image recipe, read statically (no container engine runs here): the properties the
chart's pod security settings rely on, and the CLI contract of the entrypoint."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from conftest import CHART, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
STAGES = re.split(r"(?m)^FROM ", DOCKERFILE)[1:]
RUNTIME = STAGES[-1]


def _instructions(stage: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"(?m)^{name}\s+(.*)$", stage)]


def test_two_stages_from_a_slim_python_pinned_to_a_patch_release() -> None:
    assert len(STAGES) == 2
    version = re.search(r"(?m)^ARG PYTHON_VERSION=(\S+)$", DOCKERFILE)
    assert version is not None
    assert re.fullmatch(r"3\.11\.\d+", version.group(1))
    for stage in STAGES:
        assert stage.startswith("python:${PYTHON_VERSION}-slim-")
    assert " AS build" in STAGES[0]
    assert " AS runtime" in STAGES[1]


def test_runtime_installs_only_the_built_wheels_and_no_build_tools() -> None:
    assert "--no-index" in RUNTIME
    assert "from=build" in RUNTIME
    assert "apt-get" not in RUNTIME
    for tool in ("gcc", "build-essential", "cc ", "make"):
        assert tool not in RUNTIME
    assert "pip uninstall -y pip setuptools wheel" in RUNTIME
    # The build stage refuses source distributions, so it never needs a compiler either.
    assert "--only-binary=:all:" in STAGES[0]


def test_runtime_user_matches_the_chart_pod_security_context() -> None:
    uid = re.search(r"(?m)^ARG UID=(\d+)$", RUNTIME)
    assert uid is not None
    assert _instructions(RUNTIME, "USER") == ["${UID}:${UID}"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f"runAsUser: {uid.group(1)}" in helpers
    assert f"runAsGroup: {uid.group(1)}" in helpers
    assert int(uid.group(1)) >= 10000


def test_read_only_root_friendly() -> None:
    assert "PYTHONDONTWRITEBYTECODE=1" in RUNTIME
    assert "compileall" in RUNTIME
    assert "HOME=/tmp" in RUNTIME
    assert "TMPDIR=/tmp" in RUNTIME


def test_entrypoint_is_the_cli_and_serve_the_default_command() -> None:
    assert _instructions(RUNTIME, "ENTRYPOINT") == ['["abuse-sidecar"]']
    assert _instructions(RUNTIME, "CMD") == ['["serve"]']
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    exposed = _instructions(RUNTIME, "EXPOSE")[0].split()
    assert exposed == [str(values["grpcPort"]), str(values["adminPort"])]


def test_dockerignore_sends_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        part.rstrip("/") for line in _instructions(STAGES[0], "COPY") for part in line.split()[:-1]
    }
    assert copied == included


def test_chart_flags_exist_in_the_cli() -> None:
    """Every flag the chart passes is one `abuse-sidecar serve` accepts today."""
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    accepted = set(re.findall(r"--([a-z][a-z-]+)", done.stdout))
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    used = set(re.findall(r"- --([a-z][a-z-]+)", helpers))
    assert used
    assert used <= accepted
