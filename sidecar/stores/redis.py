"""The Redis store: one script call per Check, many Checks per socket write.

Shape of the hot path (``RedisStore.execute``):

1. *Breaker.* While the circuit is open the call fails at once with
   ``StoreUnavailable``: a dead Redis costs no socket and no timeout per request.
   A background probe closes the circuit when Redis answers again.
2. *Over-limit cache.* A limit the store recently denied is denied locally until
   its retry time (``over_limit.py``); a plan that needs nothing else from Redis
   costs no round trip.
3. *Coalescing.* The plan becomes one ``EVALSHA`` (``plan_codec.py``) queued on
   the connection of its Redis node (a ``Lane``, ``redis_lane.py``: redis-py
   connects, then a Protocol of ours reads the replies). Everything queued during
   one turn of the event loop goes out as one pipeline: one socket write, one
   read of all replies. Each script is still atomic on its own keys. Under load
   the connection carries ``max_in_flight`` batches while the next accumulates,
   so batches grow on their own (up to ``MAX_BATCH`` scripts each).
4. *Errors.* Any timeout, connection or server error becomes ``StoreUnavailable``
   (and one call of ``on_error``); the engine then follows ``failureMode``.

``NOSCRIPT`` (after ``SCRIPT FLUSH`` or a restart) is answered by loading the
script on that connection and re-sending the affected commands once.

Redis Cluster: every key of a policy carries the policy's hash tag, so a plan's
operations share one slot and one script call, except revocation checks, whose
keys live under the global ``{rv}`` tag. A plan with a revocation check is split
into one script call per slot, sent in the same round trip (both nodes are
written before either is read); the results are merged in plan order. The
trade-off: the policy-slot script cannot see the revocation answer, so in
cluster mode a request with a revoked token is still counted by the limits and
cohorts that follow the revocation check, although it is denied and the later
results are reported as not run. Standalone and Sentinel Redis run the whole
plan in one script and do not have this gap.

URLs: ``redis://`` and ``rediss://`` (TLS) as redis-py reads them;
``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``;
``redis+cluster://[user:password@]host:port[,host:port...]`` (add
``?ssl=true`` for TLS to the nodes).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import ConfigurationError, StoreUnavailable
from sidecar.stores import keys
from sidecar.stores.base import (
    ActiveCheck,
    BlockSet,
    CohortMember,
    LimitCheck,
    LimitResult,
    Operation,
    OpResult,
    RevocationCheck,
    StorePlan,
)
from sidecar.stores.breaker import CircuitBreaker
from sidecar.stores.over_limit import OverLimitCache
from sidecar.stores.plan_codec import PlanCodec, command, denies
from sidecar.stores.redis_lane import Batch, Lane, LaneLost, ReplyError

log = logging.getLogger(__name__)

SCRIPT = importlib.resources.files("sidecar.stores").joinpath("lua/check.lua").read_bytes()
# Redis names scripts by their SHA-1; this is an identifier, not a security measure.
SCRIPT_SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest()
_LOAD_SCRIPT = command(b"SCRIPT", b"LOAD", SCRIPT)

MAX_BATCH = 256  # scripts per pipeline
ErrorHook = Callable[[str], None]
ConnectionFactory = Callable[[], AbstractConnection]
_Pending = list[tuple[bytes, "asyncio.Future[Any]"]]

# What a failing Redis, network or client can raise while we talk to it.
_BACKEND_ERRORS = (redis_errors.RedisError, OSError, TimeoutError, EOFError)


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class _Node:
    """The hot-path connection to one Redis server: a ``Lane`` carrying up to
    ``max_in_flight`` batches at a time. Commands submitted while that many are
    out wait and leave together when one comes back."""

    __slots__ = (
        "_connect",
        "_connection",
        "_dialing",
        "_in_flight",
        "_lane",
        "_max_in_flight",
        "_pending",
        "_scheduled",
        "_store",
        "name",
    )

    def __init__(
        self, name: str, connect: ConnectionFactory, max_in_flight: int, store: RedisStore
    ) -> None:
        self.name = name
        self._store = store
        self._connect = connect
        self._max_in_flight = max_in_flight
        self._connection: AbstractConnection | None = None  # redis-py's, owns the socket
        self._lane: Lane | None = None
        self._dialing: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._pending: _Pending = []
        self._scheduled = False

    def submit(self, payload: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((payload, future))
        if not self._scheduled:
            self._scheduled = True
            # Runs after every callback already queued for this loop iteration,
            # so all Checks of this turn share the batch.
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        lane = self._lane
        if lane is None or lane.closed:
            if self._pending and self._dialing is None:
                self._dialing = asyncio.get_running_loop().create_task(self._dial())
            return
        while self._pending and self._in_flight < self._max_in_flight:
            # A bounded batch keeps Redis' work per exchange (about 30 µs per
            # script) well inside the command timeout however deep the queue is.
            if len(self._pending) <= MAX_BATCH:
                batch, self._pending = self._pending, []
            else:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._store.batches += 1
            self._store.scripts += len(batch)
            self._in_flight += 1
            self._send(lane, [p for p, _ in batch], [f for _, f in batch], self._answered)
        # Anything left waits: the batch that comes back flushes again.

    def _send(
        self,
        lane: Lane,
        payloads: list[bytes],
        futures: list[asyncio.Future[Any] | None],
        on_done: Callable[[Batch, BaseException | None], None],
    ) -> None:
        batch = Batch(payloads, futures, on_done)
        # One deadline per batch: a server that accepts the bytes but never answers
        # (frozen, overloaded) must cost no more than the command timeout, or
        # Envoy's own ext_authz timeout fires first and failureMode is never applied.
        batch.timer = asyncio.get_running_loop().call_later(
            self._store.command_timeout, lane.fail, TimeoutError()
        )
        lane.send(batch)

    def _answered(self, batch: Batch, error: BaseException | None) -> None:
        """A batch of scripts came back (or its lane failed)."""
        if error is not None:
            self._lost(batch, error)
        elif any(type(reply) is ReplyError for reply in batch.replies):
            self._replied_with_errors(batch)
        else:  # the common case: every script answered
            self._deliver(batch.futures, batch.replies)
            self._store.record_success()
            self._in_flight -= 1
            if self._pending:
                self._flush()

    def _lost(self, batch: Batch, error: BaseException) -> None:
        self._in_flight -= 1
        if self._store.closed:
            for future in batch.futures:
                if future is not None:
                    future.cancel()  # not Redis' fault: nothing to count or report
            return
        if isinstance(error, LaneLost) and batch.reused:
            # An idle socket Redis closed (a restart, an idle timeout): send once
            # more on a fresh connection. Should Redis have run the scripts before
            # the socket died, they run twice: counts err on the side of denying.
            self._pending[:0] = [
                (payload, future)
                for payload, future in zip(batch.payloads, batch.futures, strict=True)
                if future is not None
            ]
        else:
            self._fail(batch.futures, error)
        self._flush()

    def _replied_with_errors(self, batch: Batch) -> None:
        store = self._store
        replies = batch.replies
        missing = [i for i, reply in enumerate(replies) if _code(reply) == "NOSCRIPT"]
        lane = self._lane
        if missing and lane is not None and not lane.closed:
            # After SCRIPT FLUSH or a restart: load the script and re-send the
            # affected calls, in one write (Redis runs them in order).
            log.info("loading check.lua into Redis (NOSCRIPT)")
            retry = [batch.futures[i] for i in missing]

            def reloaded(again: Batch, error: BaseException | None) -> None:
                if error is not None:
                    self._fail(retry, error)
                else:
                    loaded, *answers = again.replies
                    if isinstance(loaded, ReplyError):
                        answers = [loaded] * len(retry)
                    self._deliver(retry, answers)
                    store.record_success()
                    _drop_if_read_only(lane, answers)
                self._in_flight -= 1
                self._flush()

            self._deliver(
                [f for i, f in enumerate(batch.futures) if i not in missing],
                [r for i, r in enumerate(replies) if i not in missing],
            )
            self._send(
                lane,
                [_LOAD_SCRIPT, *(batch.payloads[i] for i in missing)],
                [None, *retry],
                reloaded,
            )
            return
        # Other errors are one script's answer each (RedisStore._results reads them).
        self._deliver(batch.futures, replies)
        store.record_success()
        if lane is not None:
            _drop_if_read_only(lane, replies)
        self._in_flight -= 1
        self._flush()

    @staticmethod
    def _deliver(futures: Sequence[asyncio.Future[Any] | None], replies: Sequence[Any]) -> None:
        for future, reply in zip(futures, replies, strict=True):
            if future is not None and not future.done():
                future.set_result(reply)

    def _fail(self, futures: Sequence[asyncio.Future[Any] | None], error: BaseException) -> None:
        store = self._store
        detail = store.describe_failure(error, self.name)
        for future in futures:
            if future is not None and not future.done():
                future.set_exception(store.unavailable(detail))
        store.record_failure(detail)

    async def _dial(self) -> None:
        store = self._store
        stale, self._connection, self._lane = self._connection, None, None
        if stale is not None:
            await _drop(stale)
        connection = self._connect()
        try:
            async with asyncio.timeout(store.command_timeout):
                await connection.connect()  # type: ignore[no-untyped-call]
            # redis-py's stream writer; its transport is handed over to the lane.
            writer = getattr(connection, "_writer", None)
            if writer is None:
                raise RuntimeError(
                    "this redis-py keeps no stream writer on its connections; "
                    "install the version in constraints.txt"
                )
            lane = Lane(writer.transport)
        except Exception as exc:
            await _drop(connection)
            waiting, self._pending = self._pending, []
            self._fail([future for _, future in waiting], exc)
            return
        except BaseException:  # cancelled (the store is closing)
            await _drop(connection)
            raise
        finally:
            self._dialing = None
        self._connection, self._lane = connection, lane
        self._flush()

    async def close(self) -> None:
        if self._dialing is not None:
            self._dialing.cancel()
        if self._lane is not None:
            self._lane.fail(LaneLost("the store is closing"))
        if self._connection is not None:
            await _drop(self._connection)


def _drop_if_read_only(lane: Lane, replies: Sequence[Any]) -> None:
    """A failed-over master answers READONLY: close the connection, so the next
    Check dials again and Sentinel names the new master."""
    if any(_code(reply) == "READONLY" for reply in replies):
        lane.fail(LaneLost("Redis is a read-only replica now"))


def _code(reply: Any) -> str | None:
    return reply.code if isinstance(reply, ReplyError) else None


async def _drop(connection: AbstractConnection) -> None:
    try:
        await connection.disconnect(nowait=True)
    except Exception as exc:  # closing a broken socket may fail too
        log.debug("closing a Redis connection failed: %r", exc)


class RedisStore:
    name = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster,
        connect: ConnectionFactory | None,
        *,
        description: str,
        command_timeout_ms: int = 50,
        connect_timeout_ms: int = 500,
        max_in_flight: int = 2,
        failure_threshold: int = 3,
        probe_interval_ms: int = 500,
        over_limit_cache_size: int = 100_000,
        admin_timeout_ms: int = 5000,
        on_error: ErrorHook | None = None,
        clock: Clock = SYSTEM_CLOCK,
        also_close: Sequence[Any] = (),
    ) -> None:
        """``client`` serves the rare commands (revoke, unblock, ping, probes);
        ``connect`` makes the pipelined lane connections (None for a cluster,
        whose lanes come from each node)."""
        # Typed loosely: redis-py's own annotations and the types-redis stubs
        # disagree across versions, and only a handful of plain commands go here.
        self._client: Any = client
        self._also_close = tuple(also_close)  # e.g. the Sentinel clients
        self._cluster: Any = client if isinstance(client, RedisCluster) else None
        self._connect = connect
        self.description = description
        self.command_timeout = command_timeout_ms / 1000
        self._connect_timeout = connect_timeout_ms / 1000
        self._admin_timeout = admin_timeout_ms / 1000
        self._max_in_flight = max_in_flight
        self._probe_interval = probe_interval_ms / 1000
        self._on_error = on_error
        self._clock = clock
        self._codec = PlanCodec(SCRIPT_SHA)
        self._breaker = CircuitBreaker(failure_threshold, clock)
        self._over_limit = OverLimitCache(over_limit_cache_size)
        self._nodes: dict[str, _Node] = {}
        self._single: _Node | None = None
        self._cluster_ready = False
        self._cluster_lock = asyncio.Lock()
        self._topology_refresh: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self.closed = False
        # Pipelines written and script calls in them (coalescing, at a glance).
        self.batches = 0
        self.scripts = 0

    # -- the hot path ------------------------------------------------------------------

    async def execute(self, plan: StorePlan) -> tuple[OpResult | None, ...]:
        if self._breaker.open:
            raise self.unavailable(self._breaker.describe())
        operations = plan.operations
        sent_at = self._clock.monotonic()
        local: LimitResult | None = None
        cut = len(operations)
        if self._over_limit and not plan.shadow:
            for index, op in enumerate(operations):
                if isinstance(op, LimitCheck):
                    local = self._over_limit.denial(op, sent_at)
                    if local is not None:
                        cut = index
                    break
        if local is not None:
            # Run only what precedes the full limit: it may deny first (a block,
            # a revocation); nothing after a denied limit runs anyway.
            head = await self._run(operations[:cut], False, sent_at) if cut else []
            if any(denies(op, result) for op, result in zip(operations, head, strict=False)):
                return (*head, *([None] * (len(operations) - cut)))
            return (*head, local, *([None] * (len(operations) - cut - 1)))
        return tuple(await self._run(operations, plan.shadow, sent_at))

    async def _run(
        self, operations: Sequence[Operation], shadow: bool, sent_at: float
    ) -> list[OpResult | None]:
        if self._cluster is not None:
            return await self._run_cluster(operations, shadow, sent_at)
        node = self._single
        if node is None:
            node = self._single = self._make_node("redis", self._connect_lane)
        reply = await node.submit(self._codec.encode(operations, shadow))
        return self._results(operations, reply, sent_at)

    def _results(
        self, operations: Sequence[Operation], reply: Any, sent_at: float
    ) -> list[OpResult | None]:
        if isinstance(reply, Exception):
            raise self._reply_failure(reply)
        results = self._codec.decode(operations, reply)
        for op, result in zip(operations, results, strict=True):
            if isinstance(result, LimitResult) and not result.allowed:
                assert isinstance(op, LimitCheck)
                for spec, state in zip(op.limits, result.states, strict=True):
                    self._over_limit.record(spec, state, sent_at)
        return results

    # -- Redis Cluster -------------------------------------------------------------------

    async def _run_cluster(
        self, operations: Sequence[Operation], shadow: bool, sent_at: float
    ) -> list[OpResult | None]:
        if not self._cluster_ready:
            await self._start_cluster()
        groups: dict[int, list[int]] = {}
        for index, op in enumerate(operations):
            groups.setdefault(_slot_of(op), []).append(index)
        if len(groups) == 1:
            (slot,) = groups
            reply = await self._node_for_slot(slot).submit(self._codec.encode(operations, shadow))
            return self._results(operations, reply, sent_at)
        # One script per slot, all submitted before any is awaited: one round trip.
        pending = []
        for slot, indexes in groups.items():
            subset = [operations[i] for i in indexes]
            payload = self._codec.encode(subset, shadow)
            pending.append((indexes, subset, self._node_for_slot(slot).submit(payload)))
        merged: list[OpResult | None] = [None] * len(operations)
        failure: BaseException | None = None
        for indexes, subset, future in pending:
            try:
                results = self._results(subset, await future, sent_at)
            except StoreUnavailable as exc:
                failure = failure or exc
                continue
            for index, result in zip(indexes, results, strict=True):
                merged[index] = result
        if failure is not None:
            raise failure
        if not shadow:
            for index, op in enumerate(operations):
                if denies(op, merged[index]):
                    merged[index + 1 :] = [None] * (len(operations) - index - 1)
                    break
        return merged

    async def _start_cluster(self) -> None:
        assert self._cluster is not None
        async with self._cluster_lock:
            if self._cluster_ready:
                return
            try:
                async with asyncio.timeout(self._admin_timeout):
                    await self._cluster.initialize()
            except _BACKEND_ERRORS as exc:
                detail = self.describe_failure(exc, "cluster")
                self.record_failure(detail)
                raise self.unavailable(detail) from exc
            self._cluster_ready = True

    def _node_for_slot(self, slot: int) -> _Node:
        assert self._cluster is not None
        try:
            cluster_node = self._cluster.nodes_manager.get_node_from_slot(slot)
        except redis_errors.RedisError as exc:
            raise self.unavailable(f"no cluster node serves slot {slot}: {exc}") from exc
        node = self._nodes.get(cluster_node.name)
        if node is None:
            node = self._make_node(cluster_node.name, _cluster_lane(cluster_node))
        return node

    def _refresh_topology(self) -> None:
        if self._cluster is None or self._topology_refresh is not None:
            return

        async def refresh() -> None:
            assert self._cluster is not None
            try:
                async with asyncio.timeout(self._admin_timeout):
                    await self._cluster.nodes_manager.initialize()
            except _BACKEND_ERRORS as exc:
                log.warning("refreshing the Redis Cluster topology failed: %s", exc)
            finally:
                self._topology_refresh = None

        self._topology_refresh = asyncio.get_running_loop().create_task(refresh())

    # -- lanes and batches -------------------------------------------------------------

    def _make_node(self, name: str, connect: ConnectionFactory) -> _Node:
        node = _Node(name, connect, self._max_in_flight, self)
        self._nodes[name] = node
        return node

    def _connect_lane(self) -> AbstractConnection:
        assert self._connect is not None
        return self._connect()

    # -- health --------------------------------------------------------------------------

    def record_success(self) -> None:
        self._breaker.record_success()

    def record_failure(self, detail: str) -> None:
        self._refresh_topology()  # a cluster node may have moved or failed over
        if self._breaker.record_failure(detail):
            log.warning("Redis store unavailable, circuit open: %s", detail)
            if self._probe is None and not self.closed:
                self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        try:
            while self._breaker.open and not self.closed:
                await asyncio.sleep(self._probe_interval)
                try:
                    async with asyncio.timeout(self.command_timeout + self._connect_timeout):
                        await self._ping_backend()
                except _BACKEND_ERRORS as exc:
                    self._breaker.last_error = self.describe_failure(exc, "probe")
                    continue
                self._breaker.record_success()
                log.warning("Redis store reachable again, circuit closed")
        finally:
            self._probe = None

    async def _ping_backend(self) -> None:
        if self._cluster is not None:
            self._cluster_ready = False
            await self._cluster.initialize()
            self._cluster_ready = True
        await self._client.ping()

    def describe_failure(self, exc: BaseException, where: str) -> str:
        if isinstance(exc, TimeoutError):
            return f"{where}: no answer within {self.command_timeout * 1000:.0f} ms"
        return f"{where}: {type(exc).__name__}: {exc}"

    def _reply_failure(self, reply: Exception) -> StoreUnavailable:
        if _code(reply) in ("MOVED", "ASK"):
            self._refresh_topology()
        return self.unavailable(f"Redis answered: {reply}")

    def unavailable(self, detail: str) -> StoreUnavailable:
        """The error for one failed call, counted once through ``on_error``."""
        if self._on_error is not None:
            self._on_error(self.name)
        return StoreUnavailable(self.name, detail)

    async def ping(self) -> None:
        if self._breaker.open:
            raise StoreUnavailable(self.name, self._breaker.describe())
        try:
            async with asyncio.timeout(self.command_timeout + self._connect_timeout):
                await self._ping_backend()
        except _BACKEND_ERRORS as exc:
            raise StoreUnavailable(self.name, self.describe_failure(exc, "ping")) from exc

    # -- operator commands ---------------------------------------------------------------

    async def revoke(self, jti: str, ttl_s: int) -> None:
        try:
            async with asyncio.timeout(self._admin_timeout):
                await self._client.set(keys.revocation_key(jti), "1", ex=max(1, ttl_s))
        except _BACKEND_ERRORS as exc:
            raise self.unavailable(self.describe_failure(exc, "revoke")) from exc

    async def unblock(self, policy: str, kind: str, value: str) -> int:
        block = keys.block_key(policy, kind, value)
        pattern = (
            f"{keys.PREFIX}:{_glob_escape(keys.policy_tag(policy))}:mem:*:"
            f"{_glob_escape(kind)}={_glob_escape(value)}"
        )
        try:
            async with asyncio.timeout(self._admin_timeout):
                doomed = [block]
                if self._cluster is not None:
                    await self._cluster.initialize()
                    node = self._cluster.get_node_from_key(block)
                    async for key in self._cluster.scan_iter(
                        match=pattern, count=1000, target_nodes=node
                    ):
                        doomed.append(key)
                    # Keys of one policy share a slot, so one DEL covers them.
                    return int(await self._cluster.delete(*doomed))
                async for key in self._client.scan_iter(match=pattern, count=1000):
                    doomed.append(key)
                return int(await self._client.delete(*doomed))
        except _BACKEND_ERRORS as exc:
            raise self.unavailable(self.describe_failure(exc, "unblock")) from exc

    async def members(self, policy: str) -> tuple[CohortMember, ...]:
        prefix = f"{keys.PREFIX}:{keys.policy_tag(policy)}:mem:"
        pattern = f"{keys.PREFIX}:{_glob_escape(keys.policy_tag(policy))}:mem:*"
        try:
            async with asyncio.timeout(self._admin_timeout):
                client: Any = self._client
                scan: dict[str, Any] = {"match": pattern, "count": 1000}
                if self._cluster is not None:
                    await self._cluster.initialize()
                    scan["target_nodes"] = self._cluster.get_node_from_key(prefix)
                    client = self._cluster
                names = [
                    k.decode() if isinstance(k, bytes) else k
                    async for k in client.scan_iter(**scan)
                ]
                ttls: list[Any] = []
                if names:
                    pipe = client.pipeline(transaction=False)
                    for name in names:
                        pipe.pttl(name)
                    ttls = await pipe.execute()
                found: list[CohortMember] = []
                for name, ttl in zip(names, ttls, strict=True):
                    ttl_ms = int(ttl)
                    if ttl_ms > 0 or ttl_ms == -1:  # -1: no expiry (set by hand)
                        cohort, _, member = name[len(prefix) :].partition(":")
                        found.append(CohortMember(cohort, member, max(ttl_ms, 0)))
                return tuple(found)
        except _BACKEND_ERRORS as exc:
            raise self.unavailable(self.describe_failure(exc, "members")) from exc

    async def remove_member(self, policy: str, cohort: str, key: str) -> bool:
        """Also forgets the count, so the next event does not re-admit the key at once."""
        member = keys.member_key(policy, cohort, key)
        try:
            async with asyncio.timeout(self._admin_timeout):
                present = int(await self._client.exists(member)) > 0
                await self._client.delete(member, keys.cohort_counter_key(policy, cohort, key))
                return present
        except _BACKEND_ERRORS as exc:
            raise self.unavailable(self.describe_failure(exc, "remove_member")) from exc

    async def close(self) -> None:
        self.closed = True
        if self._probe is not None:
            self._probe.cancel()
        if self._topology_refresh is not None:
            self._topology_refresh.cancel()
        for node in self._nodes.values():
            await node.close()
        try:
            await self._client.aclose()
            if self._cluster is None:
                # A client given its pool does not close it: the ping connections.
                await self._client.connection_pool.disconnect()
            for client in self._also_close:
                await client.aclose()
        except _BACKEND_ERRORS as exc:
            log.debug("closing the Redis client failed: %r", exc)


def _slot_of(op: Operation) -> int:
    """The cluster slot of an operation (all keys of one operation share a tag)."""
    if isinstance(op, LimitCheck):
        key = op.limits[0].key
    elif isinstance(op, ActiveCheck | BlockSet):
        key = op.keys[0]
    elif isinstance(op, RevocationCheck):
        key = op.key
    else:
        key = op.counter_key
    return key_slot(key.encode())


def _cluster_lane(node: ClusterNode) -> ConnectionFactory:
    def connect() -> AbstractConnection:
        connection: AbstractConnection = node.acquire_connection()
        return connection

    return connect


# -- URLs -------------------------------------------------------------------------------


def _lane_options(connect_timeout_ms: int) -> dict[str, Any]:
    # The store bounds every exchange itself; connection-level retries would only
    # stretch a failure past the command timeout.
    return {
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout_ms / 1000,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        if not item:
            continue
        if item.startswith("["):  # [v6]:port
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        hosts.append((host, int(port) if port else default_port))
    if not hosts:
        raise ConfigurationError("the Redis URL names no host")
    return hosts


def _credentials(netloc: str) -> dict[str, str]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return {}
    username, _, password = userinfo.partition(":")
    out = {}
    if username:
        out["username"] = unquote(username)
    if password:
        out["password"] = unquote(password)
    return out


def open_redis_store(
    url: str,
    *,
    command_timeout_ms: int = 50,
    connect_timeout_ms: int = 500,
    on_error: ErrorHook | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **tuning: int,
) -> RedisStore:
    """A RedisStore for a ``redis://``, ``rediss://``, ``redis+sentinel://`` or
    ``redis+cluster://`` URL. Connects lazily: the first Check (or ``ping``) dials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = _lane_options(connect_timeout_ms)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    description = f"{scheme}://{parts.hostname or ''}{parts.path}"
    common: dict[str, Any] = {
        "description": description,
        "command_timeout_ms": command_timeout_ms,
        "connect_timeout_ms": connect_timeout_ms,
        "on_error": on_error,
        "clock": clock,
        **tuning,
    }
    try:
        if scheme in ("redis", "rediss", "unix"):
            pool: ConnectionPool = ConnectionPool.from_url(url, **options)
            return RedisStore(Redis(connection_pool=pool), pool.make_connection, **common)
        if scheme == "redis+sentinel":
            segments = [segment for segment in parts.path.split("/") if segment]
            service = segments[0] if segments else "mymaster"
            db = int(segments[1]) if len(segments) > 1 else int(query.get("db", "0"))
            credentials: dict[str, Any] = {"db": db, **_credentials(parts.netloc)}
            sentinel_options = {
                name: query[name]
                for name in ("sentinel_username", "sentinel_password")
                if name in query
            }
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                _hosts(parts.netloc, 26379),
                sentinel_kwargs={
                    "socket_connect_timeout": connect_timeout_ms / 1000,
                    "socket_timeout": max(command_timeout_ms, connect_timeout_ms) / 1000,
                    **{name.removeprefix("sentinel_"): v for name, v in sentinel_options.items()},
                },
                **options,
            )
            client = sentinel.master_for(service, **credentials)
            return RedisStore(
                client,
                client.connection_pool.make_connection,
                also_close=sentinel.sentinels,
                **common,
            )
        if scheme == "redis+cluster":
            nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
            ssl = query.get("ssl", "").lower() in ("1", "true", "yes")
            cluster_options: dict[str, Any] = {
                **_credentials(parts.netloc),
                **{name: value for name, value in options.items() if name != "retry"},
            }
            cluster: RedisCluster = RedisCluster(startup_nodes=nodes, ssl=ssl, **cluster_options)
            return RedisStore(cluster, None, **common)
    except (ValueError, redis_errors.RedisError) as exc:
        raise ConfigurationError(f"invalid Redis URL {description!r}: {exc}") from exc
    raise ConfigurationError(
        f"unsupported store URL scheme {scheme!r}: use redis://, rediss://, "
        "redis+sentinel://, redis+cluster:// or memory://"
    )
