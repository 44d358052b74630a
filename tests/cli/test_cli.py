"""The command line, run as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
INVALID = ROOT / "tests/policies/invalid"
VALID = ROOT / "tests/policies/valid"

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {name: shop, namespace: demo}
spec:
  hosts: [api.example.com]
  honeypots: {paths: [/.env, /admin/**], blockFor: 1h}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("abuse-sidecar", path=str(Path(sys.executable).parent))
    assert exe, "the console script abuse-sidecar is installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def test_validate_accepts_valid_policies() -> None:
    result = run("validate", str(VALID))
    assert result.returncode == 0, result.stderr


def test_validate_names_file_document_and_field() -> None:
    result = run("validate", str(INVALID / "bad-period.yaml"))
    assert result.returncode == 1
    assert (
        f"{INVALID / 'bad-period.yaml'} (document 0): spec.rateLimits[1].period: " in result.stderr
    )


def test_validate_counts_every_invalid_document() -> None:
    result = run("validate", str(INVALID))
    assert result.returncode == 1
    assert f"{len(list(INVALID.glob('*.yaml')))} invalid document(s)" in result.stderr


def test_crd_prints_the_generated_crd() -> None:
    result = run("crd")
    assert result.returncode == 0
    crd = yaml.safe_load(result.stdout)
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "abusepolicies.abuse.sidecar.dev"


def test_check_explains_a_denial_as_json(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    result = run(
        "check",
        "--policies",
        str(tmp_path),
        "--method",
        "GET",
        "--path",
        "/admin/x",
        "--host",
        "api.example.com",
        "--ip",
        "203.0.113.5",
        "--output",
        "json",
    )
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert out["decision"] == "deny"
    assert out["status"] == 403
    assert out["reason"] == "honeypot"
    assert out["policy"] == "demo/shop"
    assert out["rule"] == "honeypots"
    assert any(s["step"] == "honeypot" and s["verdict"] == "deny" for s in out["steps"])


def test_check_allows_and_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    result = run(
        "check",
        "--policies",
        str(tmp_path),
        "--method",
        "GET",
        "--path",
        "/products",
        "--host",
        "api.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ALLOW 200")


def test_check_with_an_invalid_policy_is_a_usage_error() -> None:
    result = run(
        "check", "--policies", str(INVALID / "bad-mode.yaml"), "--method", "GET", "--path", "/"
    )
    assert result.returncode == 2
    assert "spec.mode" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    assert run("frobnicate").returncode == 2


def test_serve_refuses_an_unknown_decision_metadata_mode() -> None:
    exe = shutil.which("abuse-sidecar", path=str(Path(sys.executable).parent))
    assert exe
    result = subprocess.run(
        [exe, "serve", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ABUSE_SIDECAR_DECISION_METADATA": "sometimes"},
    )
    assert result.returncode == 2
    assert "ABUSE_SIDECAR_DECISION_METADATA must be auto or always" in result.stderr
