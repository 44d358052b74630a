"""The checked-in code under sidecar/api/ is what proto/ compiles to today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen-proto"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in ("explain_pb2.py", "explain_pb2.pyi", "explain_pb2_grpc.py"):
        fresh = (tmp_path / name).read_text()
        checked_in = (ROOT / "sidecar/api" / name).read_text()
        assert fresh == checked_in, f"sidecar/api/{name} is stale: run scripts/gen-proto"
