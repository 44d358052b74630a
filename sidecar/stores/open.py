"""``open_store(url)``: the one place that turns a store URL into a Store."""

from __future__ import annotations

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import ConfigurationError
from sidecar.stores.base import Store
from sidecar.stores.memory import MemoryStore
from sidecar.stores.redis import ErrorHook, open_redis_store

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


def open_store(
    url: str | None,
    *,
    command_timeout_ms: int = 50,
    connect_timeout_ms: int = 500,
    on_error: ErrorHook | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **tuning: int,
) -> Store:
    """The store for ``--redis-url``: None or ``memory://`` is the in-process store.

    ``on_error(store_name)`` is called once per failed store call (connect the
    ``abuse_sidecar_store_errors_total`` counter to it). ``tuning`` passes the
    Redis store's knobs (``max_in_flight``, ``failure_threshold``,
    ``probe_interval_ms``, ``over_limit_cache_size``, ``admin_timeout_ms``).
    """
    if url is None or url == "" or url.startswith("memory:"):
        return MemoryStore(clock)
    scheme = url.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            f"unsupported store URL scheme {scheme!r}: use redis://, rediss://, "
            "redis+sentinel://, redis+cluster:// or memory://"
        )
    if command_timeout_ms <= 0:
        raise ConfigurationError("the Redis command timeout must be a positive number of ms")
    return open_redis_store(
        url,
        command_timeout_ms=command_timeout_ms,
        connect_timeout_ms=connect_timeout_ms,
        on_error=on_error,
        clock=clock,
        **tuning,
    )
