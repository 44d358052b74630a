"""JWKS caches against a real local HTTP server: fetch, refresh, rotation, failure."""

from __future__ import annotations

import asyncio
import gc
import secrets
import socket
import weakref
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from sidecar.identity import errors
from sidecar.identity.jwks import JwksCache, JwksRegistry, JwksSettings
from sidecar.identity.jwt import JwtVerifier
from tests.identity_tokens import (
    FakeClock,
    JwksServer,
    claims,
    ec_key,
    jwks_document,
    jwt_rules,
    mint,
    public_jwk,
    rsa_key,
)

FAST = JwksSettings(
    timeout_s=1.0,
    default_ttl_s=300.0,
    min_ttl_s=60.0,
    max_ttl_s=3600.0,
    miss_interval_s=30.0,
    retry_initial_s=0.05,
    retry_max_s=0.2,
)


@pytest.fixture
def server() -> Iterator[JwksServer]:
    running = JwksServer(jwks_document(public_jwk(rsa_key(), "k1"))).start()
    yield running
    running.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def registry(clock: FakeClock) -> AsyncIterator[JwksRegistry]:
    created = JwksRegistry(settings=FAST, clock=clock)
    yield created
    await created.aclose()


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_refresh_fetches_and_parses(server: JwksServer, clock: FakeClock) -> None:
    cache = JwksCache(server.url, settings=FAST, clock=clock)
    ready_before = cache.ready
    assert await cache.refresh()
    assert (ready_before, cache.ready) == (False, True)
    assert list(cache.keys.by_kid) == ["k1"]
    assert server.fetches() == 1


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        (None, 300.0),
        ("max-age=600", 600.0),
        ("public, max-age=900, must-revalidate", 900.0),
        ("max-age=5", 60.0),  # floor
        ("max-age=999999", 3600.0),  # ceiling
        ("no-store", 60.0),
        ("private", 300.0),
    ],
)
async def test_lifetime_honours_cache_control_within_bounds(
    server: JwksServer, clock: FakeClock, cache_control: str | None, lifetime: float
) -> None:
    server.set_document(jwks_document(public_jwk(rsa_key(), "k1")), cache_control)
    cache = JwksCache(server.url, settings=FAST, clock=clock)
    assert await cache.refresh()
    assert cache.lifetime_s == lifetime
    assert cache.next_refresh_s() == pytest.approx(lifetime * FAST.refresh_ahead)


async def test_failing_idp_keeps_the_last_good_set(server: JwksServer, clock: FakeClock) -> None:
    cache = JwksCache(server.url, settings=FAST, clock=clock)
    assert await cache.refresh()
    good = cache.keys
    for breakage in ("503", "not json", "no usable key", "empty set", "too big"):
        server.fail_with(None)
        if breakage == "503":
            server.fail_with(503)
        elif breakage == "not json":
            server.set_document({"keys": "nope"})
        elif breakage == "no usable key":
            server.set_document(jwks_document({"kty": "oct", "k": "AA"}))
        elif breakage == "empty set":
            server.set_document({"keys": []})
        else:
            server.set_document({"keys": [], "pad": "x" * (FAST.max_bytes + 1)})
        assert not await cache.refresh(), breakage
        assert cache.keys is good, breakage
        assert cache.last_error, breakage
    assert "503" in (await _error_after(cache, server, 503))
    # Failures back off, bounded.
    assert FAST.retry_initial_s <= cache.next_refresh_s() <= FAST.retry_max_s
    server.fail_with(None)
    server.set_document(jwks_document(public_jwk(ec_key(), "k2")))
    assert await cache.refresh()
    assert list(cache.keys.by_kid) == ["k2"]
    assert cache.last_error is None


async def _error_after(cache: JwksCache, server: JwksServer, status: int) -> str:
    server.fail_with(status)
    await cache.refresh()
    return cache.last_error or ""


async def test_unresponsive_idp_times_out(clock: FakeClock) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = listener.getsockname()[1]
        settings = JwksSettings(timeout_s=0.3)
        cache = JwksCache(f"http://127.0.0.1:{port}/jwks.json", settings=settings, clock=clock)
        async with asyncio.timeout(3):
            assert not await cache.refresh()
        assert "no answer within 0.3s" in (cache.last_error or "")
    finally:
        listener.close()


async def test_redirects_are_not_followed(clock: FakeClock) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("location", "http://attacker.test/jwks.json")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        cache = JwksCache(f"http://127.0.0.1:{port}/jwks.json", settings=FAST, clock=clock)
        assert not await cache.refresh()
        assert "set jwksUri to the final URL" in (cache.last_error or "")
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_rotated_key_is_picked_up_without_restart(
    server: JwksServer, registry: JwksRegistry, clock: FakeClock
) -> None:
    cache = registry.cache_for(server.url)
    verifier = JwtVerifier(jwt_rules(), cache, clock=clock)
    await registry.start()
    assert await registry.wait_ready(5)
    old = mint(rsa_key(), claims(now=clock.now()), kid="k1")
    assert verifier.verify(old).subject == "alice"

    # The provider rotates: k1 is gone, k2 signs new tokens.
    server.set_document(jwks_document(public_jwk(rsa_key(1), "k2")))
    new = mint(rsa_key(1), claims(now=clock.now(), subject="bob"), kid="k2")
    with pytest.raises(errors.UnknownSigningKey):
        verifier.verify(new)  # wakes the background refresh
    await eventually(lambda: "k2" in cache.keys.by_kid)
    assert verifier.verify(new).subject == "bob"
    # The cached verdict for the old token died with its key.
    with pytest.raises(errors.UnknownSigningKey):
        verifier.verify(old)
    assert server.fetches() == 2


async def test_random_kids_do_not_hammer_the_idp(
    server: JwksServer, registry: JwksRegistry, clock: FakeClock
) -> None:
    cache = registry.cache_for(server.url)
    verifier = JwtVerifier(jwt_rules(), cache, clock=clock)
    await registry.start()
    assert await registry.wait_ready(5)

    async def flood_then_expect(fetches: int) -> None:
        for _ in range(200):
            token = mint(rsa_key(), claims(now=clock.now()), kid=secrets.token_hex(8))
            with pytest.raises(errors.UnknownSigningKey):
                verifier.verify(token)
            await asyncio.sleep(0)
        await eventually(lambda: server.fetches() >= fetches)
        await asyncio.sleep(0.2)  # room for any further fetch to (wrongly) happen
        assert server.fetches() == fetches

    await flood_then_expect(2)  # the initial fetch, then one for the whole flood
    clock.advance(FAST.miss_interval_s / 2)
    await flood_then_expect(2)  # within the interval: none
    clock.advance(FAST.miss_interval_s / 2)
    await flood_then_expect(3)  # one per interval, however many misses


async def test_background_retries_while_idp_fails(
    server: JwksServer, registry: JwksRegistry
) -> None:
    server.fail_with(500)
    cache = registry.cache_for(server.url)
    await registry.start()
    assert not await registry.wait_ready(2)
    await eventually(lambda: server.fetches() >= 3)
    server.fail_with(None)
    await eventually(lambda: cache.ready)
    assert list(cache.keys.by_kid) == ["k1"]


async def test_registry_shares_one_cache_per_uri(
    server: JwksServer, registry: JwksRegistry
) -> None:
    first = registry.cache_for(server.url)
    assert registry.cache_for(server.url) is first
    await registry.start()
    late = registry.cache_for(server.url + "?v=2")  # created after start: fetches at once
    await eventually(lambda: late.ready and first.ready)
    assert server.fetches() == 1
    assert server.fetches(server.path + "?v=2") == 1


async def test_dropped_cache_stops_its_task(server: JwksServer, registry: JwksRegistry) -> None:
    holder = [registry.cache_for(server.url)]  # what a compiled policy does
    ref = weakref.ref(holder[0])
    await registry.start()
    await eventually(lambda: ref() is not None and ref().ready)  # type: ignore[union-attr]
    assert len(registry._tasks) == 1
    holder.clear()  # the policy is replaced by one that no longer names this URI
    gc.collect()
    assert ref() is None
    await eventually(lambda: not registry._tasks)
    assert registry.caches() == []


async def test_aclose_stops_everything(server: JwksServer, clock: FakeClock) -> None:
    registry = JwksRegistry(settings=FAST, clock=clock)
    cache = registry.cache_for(server.url)
    await registry.start()
    await eventually(lambda: cache.ready)
    await registry.aclose()
    assert not registry._tasks
    clock.advance(FAST.miss_interval_s)
    cache.note_unknown_kid()  # nothing runs it any more
    await asyncio.sleep(0.1)
    assert server.fetches() == 1


async def test_scheduled_refresh_before_expiry(server: JwksServer, clock: FakeClock) -> None:
    short = JwksSettings(default_ttl_s=0.2, min_ttl_s=0.2, max_ttl_s=0.2, refresh_ahead=0.5)
    registry = JwksRegistry(settings=short, clock=clock)
    try:
        cache = registry.cache_for(server.url)
        await registry.start()
        await eventually(lambda: cache.ready)
        server.set_document(jwks_document(public_jwk(rsa_key(1), "k2")))
        # No token asks for k2: the set is refetched on schedule all the same.
        await eventually(lambda: "k2" in cache.keys.by_kid, timeout_s=3)
        assert server.fetches() >= 2
    finally:
        await registry.aclose()
