"""One pipelined Redis connection of the hot path: batches out, replies in, in order.

redis-py opens and prepares the connection (TLS, AUTH, SELECT, Sentinel's master
lookup, a cluster node's address); its transport is then handed to a ``Lane``, an
asyncio Protocol that feeds arriving bytes straight into hiredis and completes
batches in the order they were written. On this path redis-py's stream reader,
its per-reply parser calls and a timeout scope per exchange cost more client CPU
than the whole rest of a rate-limited Check (``bench/grpc_cpu.py --scenario
ratelimit``); a Protocol pays one callback per arriving segment.

A lane knows nothing about scripts or retries: ``RedisStore`` (``redis.py``)
decides what a completed or failed batch means.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis


class ReplyError(Exception):
    """An error reply (``-NOSCRIPT ...``, ``-MOVED ...``): one script's answer, carried
    as a value among the batch's replies; the connection is still in sync."""

    @property
    def code(self) -> str:
        """The reply's first word: ``NOSCRIPT``, ``READONLY``, ``MOVED``, ``ERR``..."""
        return str(self).split(" ", 1)[0]


class LaneLost(ConnectionError):
    """The connection closed or broke with this batch unanswered."""


class Batch:
    """Commands written together; ``on_done(batch, error)`` once every reply is in
    (``error`` None) or the lane failed first (``replies`` then incomplete). The
    lane cancels ``timer`` (the caller's deadline for the batch) before that call."""

    __slots__ = ("futures", "on_done", "payloads", "replies", "reused", "timer")

    def __init__(
        self,
        payloads: list[bytes],
        futures: list[asyncio.Future[Any] | None],
        on_done: Callable[[Batch, BaseException | None], None],
    ) -> None:
        self.payloads = payloads
        self.futures = futures
        self.on_done = on_done
        self.replies: list[Any] = []
        self.reused = False  # written on a lane that had answered before
        self.timer: asyncio.TimerHandle | None = None


class Lane(asyncio.Protocol):
    __slots__ = ("_batches", "_reader", "_transport", "answered", "closed")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._batches: deque[Batch] = deque()
        self.answered = False
        self.closed = False
        # asyncio's or uvloop's (which is not an asyncio.Transport subclass).
        self._transport = transport
        # Handshake done and nothing in flight: from now on every byte is ours.
        transport.set_protocol(self)

    def send(self, batch: Batch) -> None:
        if self.closed:
            _finish(batch, LaneLost("the Redis connection is closed"))
            return
        batch.reused = self.answered
        self._batches.append(batch)
        self._transport.write(b"".join(batch.payloads))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        batches = self._batches
        try:
            reply = reader.gets()
            while reply is not False:
                batch = batches[0]  # IndexError: a reply nobody asked for
                replies = batch.replies
                replies.append(reply)
                if len(replies) == len(batch.payloads):
                    batches.popleft()
                    self.answered = True
                    _finish(batch, None)
                    if self.closed:
                        return  # on_done failed the lane (a READONLY master)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(LaneLost(f"unreadable reply from Redis: {exc!r}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(LaneLost(f"Redis closed the connection{f': {exc}' if exc else ''}"))

    def fail(self, error: BaseException) -> None:
        """Close the connection and fail every batch still waiting with ``error``."""
        self._transport.abort()
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        self.closed = True
        batches, self._batches = self._batches, deque()
        for batch in batches:
            _finish(batch, error)


def _finish(batch: Batch, error: BaseException | None) -> None:
    if batch.timer is not None:
        batch.timer.cancel()
    batch.on_done(batch, error)
