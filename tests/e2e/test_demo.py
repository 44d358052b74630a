"""The README's demo command works: every answer is the one its script expects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_allowed_and_denied_requests_and_exits_cleanly(envoy_bin: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 allowed, 5 denied" in done.stdout
    for reason in ("rate_limited", "invalid_credentials", "honeypot", "shadow=honeypot"):
        assert reason in done.stdout
    assert "expected" not in done.stdout
