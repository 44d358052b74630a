"""The sample application behind Envoy: echoes what reached it.

Every request is answered with JSON ``{"method", "path", "query", "headers",
"body_bytes"}`` (header names lower-cased, repeated headers joined with ", "),
so a test can assert which ``x-abuse-*`` headers the sidecar added and what
Envoy forwarded. Paths listed in ``statuses`` answer that status instead of 200
(``/deny-403`` → 403 lets response-code cohorts be tested). Every request is
also recorded in ``requests`` for assertions without parsing responses.

In a test: ``with UpstreamServer(port, statuses={"/deny-403": 403}) as app: ...``.
From a shell: ``python -m tests.harness.upstream --listen 127.0.0.1:8000 --status /deny-403=403``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

from tests.harness.ports import LOOPBACK

DEFAULT_STATUSES = {"/deny-401": 401, "/deny-403": 403, "/error-500": 500}
"""Paths at which the test upstream answers these statuses (response-code cohorts)."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": dict(self.headers),
            "body_bytes": len(self.body),
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # bursts of concurrent requests through Envoy (default 5)

    def __init__(self, address: tuple[str, int], statuses: Mapping[str, int]) -> None:
        super().__init__(address, _EchoHandler)
        self.statuses = dict(statuses)
        self.received: list[ReceivedRequest] = []
        self.received_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request (wrk at its deadline) is not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy pools upstream connections
    # Headers and body go out in two writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        parts = urlsplit(self.path)
        request = ReceivedRequest(self.command, parts.path, parts.query, headers, body)
        with self.server.received_lock:
            self.server.received.append(request)
        status = self.server.statuses.get(parts.path, 200)
        payload = json.dumps(request.as_json()).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on ``requests``, not on stderr."""


class UpstreamServer:
    """An echoing HTTP/1.1 server on a background thread."""

    def __init__(
        self, port: int = 0, host: str = LOOPBACK, statuses: Mapping[str, int] | None = None
    ) -> None:
        self._server = _Server((host, port), statuses or {})
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"upstream:{port}", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._server.received_lock:
            return list(self._server.received)

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    def start(self) -> UpstreamServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_status(text: str) -> tuple[str, int]:
    path, sep, status = text.partition("=")
    if not sep or not path.startswith("/") or not status.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not PATH=STATUS (e.g. /deny-403=403)")
    return path, int(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.upstream")
    parser.add_argument("--listen", default=f"{LOOPBACK}:8000", metavar="HOST:PORT")
    parser.add_argument("--status", action="append", type=_parse_status, default=[])
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = UpstreamServer(int(port), host, dict(args.status))
    stopped = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with server:
        print(f"upstream listening on {server.url}", flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
