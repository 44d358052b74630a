"""Admin HTTP: /healthz, /readyz, /metrics, /policies (CONTRACT.md section 1).

A deliberately small HTTP/1.1 server on asyncio streams: probes and Prometheus
scrapes need GET and nothing else, and a framework would be more code to trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sidecar.observability.metrics import render_metrics

log = logging.getLogger("sidecar.admin")

MAX_REQUEST_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: list[str]
    details: dict[str, Any]


ReadinessProbe = Callable[[], Awaitable[Readiness]]
PoliciesView = Callable[[], dict[str, Any]]
# Extra endpoints (e.g. cohort members): (method, path) -> handler(query) -> (status, JSON body)
RouteHandler = Callable[[dict[str, list[str]]], Awaitable[tuple[int, Any]]]


class AdminServer:
    def __init__(
        self,
        listen: str,
        readiness: ReadinessProbe,
        policies: PoliciesView,
        routes: dict[tuple[str, str], RouteHandler] | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]") or "0.0.0.0"
        self._port = int(port)
        self._readiness = readiness
        self._policies = policies
        self._routes = dict(routes or {})
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("admin HTTP listening on %s:%s", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        try:
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = request_line.split(" ", 2)
        except ValueError:
            await self._send(writer, 400, "text/plain", b"bad request\n")
            return
        path, _, query = target.partition("?")
        try:
            status, content_type, body = await self._route(method, path, query)
        except Exception:
            log.exception("admin endpoint %s failed", path)
            status, content_type, body = 500, "application/json", b'{"error":"internal error"}'
        await self._send(writer, status, content_type, body if method != "HEAD" else b"", len(body))

    def add_route(self, method: str, path: str, handler: RouteHandler) -> None:
        self._routes[(method, path)] = handler

    async def _route(self, method: str, path: str, query: str) -> tuple[int, str, bytes]:
        extra = self._routes.get((method, path))
        if extra is not None:
            status, payload = await extra(parse_qs(query, keep_blank_values=True))
            return status, "application/json", _json(payload)
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            readiness = await self._readiness()
            body = {"ready": readiness.ready, "reasons": readiness.reasons, **readiness.details}
            return (200 if readiness.ready else 503), "application/json", _json(body)
        if path == "/metrics":
            payload, content_type = render_metrics()
            return 200, content_type, payload
        if path == "/policies":
            return 200, "application/json", _json(self._policies())
        return 404, "text/plain", b"not found\n"

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        length: int | None = None,
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }.get(status, "OK")
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length if length is not None else len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=False, default=str).encode() + b"\n"
