"""Where the shared test data lives: ``../shared/testdata/<name>`` beside the
checkout (the canonical copy, ``/work/shared`` on a workstation), else the copy
checked in under ``tests/data/<name>`` so that a checkout on its own (CI) runs
the same tests instead of skipping them.

The copies: ``mmdb/`` is MaxMind's test databases (Apache-2.0 or MIT, see its
README), ``k8s/`` the exchanges recorded from a real kube-apiserver.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = REPO / "tests" / "data"


def shared_testdata(name: str) -> Path:
    for candidate in (
        REPO.parent / "shared" / "testdata" / name,
        Path("/work/shared/testdata") / name,
    ):
        if candidate.is_dir():
            return candidate
    return CHECKED_IN / name


def mmdb_dir() -> Path:
    """MaxMind's test databases (``ABUSE_SIDECAR_MMDB_TESTDATA`` overrides)."""
    override = os.environ.get("ABUSE_SIDECAR_MMDB_TESTDATA")
    return Path(override) if override else shared_testdata("mmdb")
