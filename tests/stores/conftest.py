"""Fixtures of the store suites.

- ``redis_server`` (session): one real redis-server shared by the suites; each
  test that uses it starts from an empty database (``FLUSHALL``).
- ``own_redis`` (function): a redis-server of the test's own, to stop and restart.
- ``store`` (function): the store under test, parametrised over ``memory`` and
  ``redis`` so one behaviour suite covers both implementations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sidecar.stores.base import Store
from sidecar.stores.memory import MemoryStore
from sidecar.stores.open import open_store
from tests.redis_server import RedisServer, redis_available

needs_redis = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    redis_server.command("FLUSHALL")
    redis_server.command("CONFIG", "RESETSTAT")
    return redis_server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        built: Store = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("clean_redis")
        # Generous timeout: the suite checks semantics on a shared 2-core machine.
        built = open_store(server.url, command_timeout_ms=2000)
    try:
        yield built
    finally:
        await built.close()
