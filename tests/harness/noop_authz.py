"""A do-nothing ext_authz server: every Check is OK.

It is the benchmark's ceiling (Envoy plus the cheapest possible Python
authorizer: grpc.aio on uvloop, like the sidecar) and the stand-in that lets
harness tests drive real Envoy without the sidecar. It serves what the Envoy
configuration calls: ``Authorization/Check``, ``AccessLogService/StreamAccessLogs``
(entries are read and dropped) and gRPC health.

``--record FILE`` turns it into a probe of the Envoy configuration: each Check
and each access-log entry becomes a JSON line in FILE, OK responses tell the
upstream what the authorizer saw (``x-noop-*`` headers) and carry dynamic
metadata, so tests can show what reaches the authorizer and the access log.
Without ``--record`` nothing but the constant response is done.

``--redis-url URL`` makes every Check await one plain redis-py asyncio ``GET``
before answering OK: the ceiling for an authorizer that needs Redis once per
request (issue 5's benchmark compares the sidecar's rate limits with it).

    python -m tests.harness.noop_authz --listen 127.0.0.1:9001 [--record FILE] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2_grpc

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.processes import ManagedProcess, start_process, wait_for_log

_REPO_ROOT = Path(__file__).resolve().parents[2]

RECORDED_METADATA = {"policy": "noop/record", "subject": "noop-subject"}
"""Dynamic metadata a recording server returns (tests look for it in the access log)."""

_OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse()
)


class NoopAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        return _OK


class RedisCallingAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """OK after one ``GET`` of a fixed key: the cost of one plain Redis call per Check."""

    KEY = "noop-authz:ceiling"

    def __init__(self, redis_url: str) -> None:
        import redis.asyncio

        self.redis: Any = redis.asyncio.Redis.from_url(redis_url)

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        await self.redis.get(self.KEY)
        return _OK


class DiscardingAccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        async for _ in request_iterator:
            pass
        return als_pb2.StreamAccessLogsResponse()


class _Recorder:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, kind: str, data: dict[str, Any]) -> None:
        self._file.write(json.dumps({"kind": kind, **data}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _header_values(http: Any) -> dict[str, str]:
    """Headers of a CheckRequest, from ``header_map`` (raw bytes) or ``headers``."""
    if http.header_map.headers:
        return {
            h.key: (h.raw_value or h.value.encode()).decode("utf-8", "backslashreplace")
            for h in http.header_map.headers
        }
    return dict(http.headers)


class RecordingAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = _header_values(http)
        seen = {
            "method": http.method,
            "path": http.path,
            "host": http.host,
            "headers": headers,
            "raw_headers": bool(http.header_map.headers),
            "body_bytes": len(http.raw_body) or len(http.body),
            "source": request.attributes.source.address.socket_address.address,
            "context_extensions": dict(request.attributes.context_extensions),
        }
        self._recorder.write("check", seen)
        echoed = {
            "x-noop-context-extensions": json.dumps(seen["context_extensions"], sort_keys=True),
            "x-noop-xff": headers.get("x-forwarded-for", "-"),
            "x-noop-body-bytes": str(seen["body_bytes"]),
            "x-noop-source": seen["source"],
        }
        metadata = struct_pb2.Struct()
        metadata.update(RECORDED_METADATA)
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=0),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=key, value=value),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                    for key, value in echoed.items()
                ]
            ),
            dynamic_metadata=metadata,
        )


class RecordingAccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        log_name = ""
        async for message in request_iterator:
            # Only a stream's first message names the log.
            if message.HasField("identifier"):
                log_name = message.identifier.log_name
            for entry in message.http_logs.log_entry:
                self._recorder.write(
                    "access_log",
                    {
                        "log_name": log_name,
                        "path": entry.request.path,
                        "status": entry.response.response_code.value,
                        "metadata": json_format.MessageToDict(entry.common_properties.metadata),
                        "filter_state": sorted(entry.common_properties.filter_state_objects),
                        "response_headers": dict(entry.response.response_headers),
                    },
                )
        return als_pb2.StreamAccessLogsResponse()


async def serve(listen: str, record: Path | None = None, redis_url: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight calls."""
    server = grpc.aio.server()
    recorder = _Recorder(record) if record is not None else None
    redis_calling = RedisCallingAuthorization(redis_url) if redis_url else None
    if redis_calling is not None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(redis_calling, server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(DiscardingAccessLog(), server)
    elif recorder is None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(NoopAuthorization(), server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(DiscardingAccessLog(), server)
    else:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            RecordingAuthorization(recorder), server
        )
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(RecordingAccessLog(recorder), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"noop_authz: cannot listen on {listen}")
    await server.start()
    print(f"noop ext_authz listening on {listen}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=2)
    if recorder is not None:
        recorder.close()
    if redis_calling is not None:
        await redis_calling.redis.aclose()


@dataclass
class NoopAuthzProcess:
    """A started do-nothing server; ``records()`` reads what a ``--record`` server saw."""

    process: ManagedProcess
    port: int
    record_path: Path | None
    host: str = LOOPBACK

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def records(self, kind: str) -> list[dict[str, Any]]:
        """``check`` or ``access_log`` lines recorded so far."""
        if self.record_path is None:
            raise RuntimeError("started without record=True: nothing is recorded")
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text(encoding="utf-8").splitlines()
        entries = [json.loads(line) for line in lines if line]
        return [entry for entry in entries if entry["kind"] == kind]

    def stop(self, timeout: float = 10.0) -> int:
        return self.process.stop(timeout)


def start_noop_authz(
    *,
    log_dir: Path,
    port: int | None = None,
    record: bool = False,
    redis_url: str | None = None,
) -> NoopAuthzProcess:
    """Run this module as a process on ``port`` (default: a free one) and wait for it;
    with ``redis_url`` each Check makes one Redis ``GET`` first.

    Several may share one port (gRPC sets SO_REUSEPORT): the wait is for this
    process's own "listening" line, not for the port.
    """
    port = free_port() if port is None else port
    record_path = log_dir / f"noop-authz-{port}.jsonl" if record else None
    argv = [sys.executable, "-m", "tests.harness.noop_authz", "--listen", f"{LOOPBACK}:{port}"]
    if record_path is not None:
        argv += ["--record", str(record_path)]
    if redis_url is not None:
        argv += ["--redis-url", redis_url]
    process = start_process(f"noop-authz-{port}", argv, log_dir=log_dir, cwd=_REPO_ROOT)
    try:
        wait_for_log(process, "listening on")
    except BaseException:
        process.stop()
        raise
    return NoopAuthzProcess(process, port, record_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.noop_authz")
    parser.add_argument("--listen", default="127.0.0.1:9001", metavar="HOST:PORT")
    parser.add_argument("--record", type=Path, metavar="FILE", help="JSON lines of what arrived")
    parser.add_argument("--redis-url", metavar="URL", help="one Redis GET per Check before OK")
    args = parser.parse_args(argv)
    if args.record is not None and args.redis_url:
        parser.error("--record and --redis-url do not combine")
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(serve(args.listen, args.record, args.redis_url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
