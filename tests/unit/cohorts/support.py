"""Helpers for cohort tests: a clock the test moves, a sink that keeps events,
and policies compiled through the real registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import RequestMethod
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage

from sidecar.cohorts.events import MembershipEvent, NotificationTarget
from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_text
from sidecar.pipeline.context import RequestContext


class ManualClock:
    """Wall and monotonic time that only move when the test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.wall = start
        self.mono = 1000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass
class RecordingSink:
    """A NotificationSink that keeps what it is handed."""

    events: list[tuple[MembershipEvent, tuple[NotificationTarget, ...]]] = field(
        default_factory=list
    )

    def submit(self, event: MembershipEvent, targets: Sequence[NotificationTarget]) -> None:
        self.events.append((event, tuple(targets)))


def compile_registry(text: str, notifier: object | None = None) -> PolicyRegistry:
    registry = PolicyRegistry(Resources(notifier=notifier))
    registry.replace_source("test.yaml", load_text(text, "test.yaml"))
    for state in registry.current.states:
        assert state.error is None, state.error
    return registry


def compile_one(text: str, notifier: object | None = None) -> CompiledPolicy:
    registry = compile_registry(text, notifier)
    (policy,) = registry.current.index.by_id.values()
    return policy


def request(
    method: str = "GET",
    path: str = "/",
    ip: str = "198.51.100.7",
    headers: dict[str, str] | None = None,
    explain: bool = True,
) -> RequestContext:
    return RequestContext(
        method=method,
        path=path,
        raw_path=path,
        query="",
        host="api.example.com",
        headers=headers or {},
        body=b"",
        source_ip=ip,
        explain=explain,
    )


def access_log_entry(
    status: int,
    path: str,
    *,
    method: str = "POST",
    authority: str = "api.example.com",
    remote: str = "203.0.113.7",
    metadata: Mapping[str, object] | None = None,
    headers: dict[str, str] | None = None,
    user_agent: str = "",
) -> HTTPAccessLogEntry:
    """An HTTP access-log entry as Envoy's gRPC access logger sends it."""
    entry = HTTPAccessLogEntry()
    common = entry.common_properties
    common.downstream_remote_address.socket_address.address = remote
    common.downstream_remote_address.socket_address.port_value = 40000
    common.start_time.GetCurrentTime()
    if metadata is not None:
        common.metadata.filter_metadata["envoy.filters.http.ext_authz"].update(metadata)
    entry.request.request_method = RequestMethod.Value(method)
    entry.request.authority = authority
    entry.request.path = path
    entry.request.user_agent = user_agent
    for name, value in (headers or {}).items():
        entry.request.request_headers[name] = value
    entry.response.response_code.value = status
    return entry


def access_log_message(entries: Sequence[HTTPAccessLogEntry]) -> StreamAccessLogsMessage:
    message = StreamAccessLogsMessage()
    message.identifier.log_name = "abuse-sidecar"
    message.identifier.node.id = "test-envoy"
    message.http_logs.log_entry.extend(entries)
    return message
