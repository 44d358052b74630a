"""Fixtures for IP intelligence tests: MaxMind's published test databases.

``mmdb`` maps a short name to each file of ``../shared/testdata/mmdb/`` (or of the
copy in ``tests/data/mmdb/``; its README lists which address is Tor, VPN, which
country and which ASN in them);
``test_databases`` is the set a sidecar would typically load.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import mmdb_dir

MMDB_DIR = mmdb_dir()
FILES = {
    "anonymous": "GeoIP2-Anonymous-IP-Test.mmdb",
    "country": "GeoIP2-Country-Test.mmdb",
    "city": "GeoIP2-City-Test.mmdb",
    "asn": "GeoLite2-ASN-Test.mmdb",
    "connection_type": "GeoIP2-Connection-Type-Test.mmdb",
}


@pytest.fixture(scope="session")
def mmdb() -> dict[str, Path]:
    paths = {name: MMDB_DIR / file for name, file in FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    assert not missing, f"MaxMind test databases missing: {missing}"
    return paths


@pytest.fixture(scope="session")
def test_databases(mmdb: dict[str, Path]) -> list[Path]:
    return [mmdb["anonymous"], mmdb["country"], mmdb["asn"]]
