"""Key sets fetched from an identity provider's ``jwksUri``, kept fresh in the background.

One ``JwksCache`` per URI, shared by every policy that names it (``JwksRegistry``).
The request path only reads ``cache.keys``, an immutable ``KeySet`` swapped whole;
all I/O happens in one background task per cache:

- fetch at start, then again before the set goes stale (``Cache-Control: max-age``
  bounded by the settings, else a default lifetime);
- when a token names an unknown ``kid``, at once, but at most one such fetch per
  ``miss_interval_s``, so random ``kid`` values cannot make us hammer the provider;
- a failed fetch (timeout, HTTP error, bad JSON, no usable key) keeps the last good
  set and retries with backoff.

A cache lives as long as a compiled policy holds it: when the last one is dropped
the cache is collected and its task cancelled, so replaced policies need no cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Final

import httpx

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import SidecarError
from sidecar.identity.jwk import EMPTY_KEYS, KeySet, parse_fetched_jwks

log = logging.getLogger(__name__)

_MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE: Final = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class JwksSettings:
    """How we treat identity providers. Shared by every cache of a registry."""

    timeout_s: float = 5.0
    """Whole fetch (connect, headers, body); a slow provider must not hold a refresh."""
    default_ttl_s: float = 300.0
    """Lifetime of a set served without ``Cache-Control: max-age``."""
    min_ttl_s: float = 60.0
    """Floor for ``max-age`` (and for ``no-store``): refetching faster helps nobody."""
    max_ttl_s: float = 86_400.0
    """Ceiling for ``max-age``: a rotated key is noticed within a day at worst."""
    refresh_ahead: float = 0.8
    """Refetch after this fraction of the lifetime, before the set goes stale."""
    miss_interval_s: float = 30.0
    """At most one fetch per interval caused by tokens with an unknown ``kid``."""
    retry_initial_s: float = 1.0
    """First retry delay after a failed fetch; doubles up to ``retry_max_s``."""
    retry_max_s: float = 60.0
    max_bytes: int = 1 << 20
    """Largest JWKS response accepted."""


class JwksFetchError(SidecarError):
    """A JWKS fetch failed; the message says what to check (URL, status, body)."""


class JwksCache:
    """The trusted keys of one ``jwksUri``; ``keys`` is always the last good set."""

    def __init__(
        self,
        uri: str,
        *,
        settings: JwksSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.uri = uri
        self.settings = settings or JwksSettings()
        self.last_error: str | None = None
        self.last_success: float | None = None  # wall clock
        self.fetch_attempts = 0
        self._clock = clock
        self._client = client
        self._keys = EMPTY_KEYS
        self._last_miss_wake: float | None = None  # monotonic
        self._failures = 0
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # the first fetch attempt has finished
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.lifetime_s = self.settings.default_ttl_s

    def __repr__(self) -> str:
        return f"JwksCache({self.uri!r}, keys={len(self._keys)}, error={self.last_error!r})"

    @property
    def keys(self) -> KeySet:
        return self._keys

    @property
    def ready(self) -> bool:
        """A key set has been fetched at least once."""
        return self.last_success is not None

    def note_unknown_kid(self) -> None:
        """Ask for a fetch because a token named a ``kid`` we lack. Rate-limited:
        at most one such fetch per ``miss_interval_s``, however many misses. The
        first miss after a quiet interval fetches at once, so a provider's new key
        is picked up on first sight."""
        now = self._clock.monotonic()
        last = self._last_miss_wake
        if last is not None and now - last < self.settings.miss_interval_s:
            return
        loop = self._loop
        if loop is None or self._task is None:
            return  # not running (offline ``check``): nothing to wake
        self._last_miss_wake = now  # claim the slot so a burst of misses wakes us once
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(self._wake.set)

    async def refresh(self) -> bool:
        """Fetch now; on success swap in the new set. Returns whether it succeeded."""
        self.fetch_attempts += 1
        try:
            document, max_age = await self._fetch()
            keys, problems = parse_fetched_jwks(document, self._keys)
        except (JwksFetchError, ValueError) as exc:
            self._failures += 1
            self.last_error = str(exc)
            log.warning(
                "JWKS fetch failed (%s); keeping the last good set of %d keys",
                exc,
                len(self._keys),
            )
            return False
        finally:
            self._settled.set()
        if not keys:
            self._failures += 1
            self.last_error = f"{self.uri}: no usable key ({'; '.join(problems) or 'empty set'})"
            log.warning(
                "%s; keeping the last good set of %d keys", self.last_error, len(self._keys)
            )
            return False
        if problems:
            log.info("JWKS %s: skipped unusable keys: %s", self.uri, "; ".join(problems))
        self._keys = keys
        self._failures = 0
        self.lifetime_s = self._lifetime(max_age)
        self.last_error = None
        self.last_success = self._clock.now()
        return True

    def next_refresh_s(self) -> float:
        """Seconds from the last fetch to the next scheduled one."""
        settings = self.settings
        if self._failures:
            backoff = settings.retry_initial_s * (1 << min(self._failures - 1, 16))
            return min(backoff, settings.retry_max_s)
        return self.lifetime_s * settings.refresh_ahead

    def _lifetime(self, max_age: int | None) -> float:
        settings = self.settings
        ttl = settings.default_ttl_s if max_age is None else float(max_age)
        return min(max(ttl, settings.min_ttl_s), settings.max_ttl_s)

    async def _fetch(self) -> tuple[Any, int | None]:
        if self._client is not None:
            return await self._get(self._client)
        async with _new_client(self.settings) as client:
            return await self._get(client)

    async def _get(self, client: httpx.AsyncClient) -> tuple[Any, int | None]:
        settings = self.settings
        try:
            async with asyncio.timeout(settings.timeout_s):
                async with client.stream(
                    "GET", self.uri, headers={"accept": "application/json"}
                ) as response:
                    if response.is_redirect:
                        raise JwksFetchError(
                            f"{self.uri}: HTTP {response.status_code} redirect to "
                            f"{response.headers.get('location', '?')}; set jwksUri to the final URL"
                        )
                    if response.status_code != 200:
                        raise JwksFetchError(f"{self.uri}: HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > settings.max_bytes:
                            raise JwksFetchError(
                                f"{self.uri}: response exceeds {settings.max_bytes} bytes"
                            )
                    cache_control = response.headers.get("cache-control", "")
        except TimeoutError:
            raise JwksFetchError(f"{self.uri}: no answer within {settings.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise JwksFetchError(f"{self.uri}: {type(exc).__name__}: {exc}") from exc
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise JwksFetchError(f"{self.uri}: response is not JSON") from None
        return document, _max_age(cache_control)


def _max_age(cache_control: str) -> int | None:
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0
    match = _MAX_AGE.search(cache_control)
    return int(match.group(1)) if match else None


def _new_client(settings: JwksSettings) -> httpx.AsyncClient:
    # No redirects: a provider's key URL is configuration, and following redirects
    # would let whoever controls a hop choose our trust anchors.
    return httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False)


async def _refresh_loop(ref: weakref.ref[JwksCache]) -> None:
    """Background refresh holding the cache only weakly between fetches, so that
    dropping the last policy that uses it ends the loop."""
    while True:
        cache = ref()
        if cache is None:
            return
        cache._wake.clear()
        await cache.refresh()
        delay = cache.next_refresh_s()
        wake = cache._wake
        del cache
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


def _cancel_soon(loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
    with contextlib.suppress(RuntimeError):  # loop already closed
        loop.call_soon_threadsafe(task.cancel)


class JwksRegistry:
    """One ``JwksCache`` per URI for the whole process, with a start/stop lifecycle.

    ``cache_for`` may be called at any time (policy compile, from any thread); caches
    created before ``start`` begin fetching when it runs, later ones at once.
    """

    def __init__(
        self, *, settings: JwksSettings | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings or JwksSettings()
        self._clock = clock
        self._caches: weakref.WeakValueDictionary[str, JwksCache] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def cache_for(self, uri: str) -> JwksCache:
        with self._lock:
            cache = self._caches.get(uri)
            if cache is None:
                cache = JwksCache(uri, settings=self.settings, clock=self._clock)
                self._caches[uri] = cache
                if self._loop is not None:
                    self._launch_threadsafe(cache)
            return cache

    def caches(self) -> list[JwksCache]:
        """Live caches, for status pages (``/policies``, readiness)."""
        with self._lock:
            return list(self._caches.values())

    async def start(self) -> None:
        """Begin fetching every known URI in the background (idempotent)."""
        if self._loop is not None:
            return
        self._client = _new_client(self.settings)
        with self._lock:
            self._loop = asyncio.get_running_loop()
            for cache in list(self._caches.values()):
                self._launch(cache)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every cache has tried its first fetch; True if all have keys."""
        caches = self.caches()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for cache in caches:
                    await cache._settled.wait()
        return all(cache.ready for cache in caches)

    async def aclose(self) -> None:
        """Stop every background task and close the HTTP client."""
        with self._lock:
            tasks = list(self._tasks)
            self._loop = None
            for cache in self._caches.values():
                cache._loop = None
                cache._task = None
                cache._client = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _launch_threadsafe(self, cache: JwksCache) -> None:
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._launch(cache)
            return
        ref = weakref.ref(cache)

        def launch() -> None:
            live = ref()
            if live is not None and self._loop is loop:
                self._launch(live)

        loop.call_soon_threadsafe(launch)

    def _launch(self, cache: JwksCache) -> None:
        loop = self._loop
        if loop is None or cache._task is not None:
            return
        cache._client = self._client
        cache._loop = loop
        task = loop.create_task(_refresh_loop(weakref.ref(cache)), name=f"jwks {cache.uri}")
        cache._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        finalizer = weakref.finalize(cache, _cancel_soon, loop, task)
        finalizer.atexit = False
