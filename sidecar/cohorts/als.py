"""Envoy's Access Log Service: finished requests in, response-cohort counts out.

Envoy's HTTP gRPC access logger streams every finished request to
``envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`` on the sidecar's
gRPC port. Each entry carries the dynamic metadata our CheckResponse set
(namespace ``envoy.filters.http.ext_authz``: policy, subject, plan, client_ip),
which is how a response is attributed to the caller the Check saw. Without that
metadata (a route without ext_authz, Envoy's own error answer) the policy is
bound by host and the client IP is taken from the downstream address, as the
Check would have.

Per message, the entries that count towards a response cohort become one
StorePlan per policy (all keys of a policy share one Redis Cluster slot). A
failing store follows the policy's ``failureMode``: ``open`` counts in the
process-local store as the Check path does; ``closed`` drops the counts, with a
log line and ``abuse_sidecar_access_log_entries_total{outcome="dropped"}``. The
stream itself never fails because of one bad entry or one store error.

Header dimensions (``by: header:<name>``) see only the request headers Envoy
was told to log (``additional_request_headers_to_log``); ``by: api_key`` needs
``api_key`` in the metadata.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import RequestMethod
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.struct_pb2 import Struct

from sidecar.compiled.hosts import normalize_host
from sidecar.compiled.paths import normalize_path, split_path
from sidecar.compiled.policy import CompiledPolicy
from sidecar.compiled.snapshot import PolicySnapshot
from sidecar.errors import StoreUnavailable
from sidecar.iprep.client_ip import client_ip
from sidecar.observability import metrics
from sidecar.pipeline.context import RequestContext
from sidecar.steps.cohorts import CohortStep, Counted
from sidecar.stores.base import CountResult, Operation, Store, StorePlan

log = logging.getLogger("sidecar.als")

SERVICE_NAME: str = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"].full_name
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
_METHODS = {value: name for name, value in RequestMethod.items() if name != "METHOD_UNSPECIFIED"}


@dataclass(frozen=True, slots=True)
class _Response:
    """One finished request that counts towards a response cohort."""

    step: CohortStep
    ctx: RequestContext
    status: int
    item: Counted


class _PolicyBatch:
    __slots__ = ("ops", "policy", "responses")

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.ops: list[Operation] = []
        self.responses: list[_Response] = []


class AccessLogReceiver:
    """The AccessLogService servicer (registered by hand: the generated base class is untyped)."""

    def __init__(
        self, snapshot: Callable[[], PolicySnapshot], store: Store, fallback: Store
    ) -> None:
        self._snapshot = snapshot
        self._store = store
        self._fallback = fallback
        self._steps_version = -1
        self._steps: dict[str, CohortStep] = {}
        self._outcomes = {
            outcome: metrics.ACCESS_LOG_ENTRIES.labels(outcome)
            for outcome in ("counted", "ignored", "dropped")
        }
        self._dropped = 0

    def register(self, server: grpc.aio.Server) -> str:
        """For ``GrpcServer(extra_services=[receiver.register])``.

        Registered with raw-bytes messages: Envoy streams an entry for every
        request, and decoding them costs tens of microseconds per request. They
        are decoded only while some policy has response cohorts to count.
        """
        handler = grpc.stream_unary_rpc_method_handler(
            self.StreamAccessLogs,
            request_deserializer=None,
            response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
        )
        server.add_registered_method_handlers(SERVICE_NAME, {"StreamAccessLogs": handler})
        return SERVICE_NAME

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[bytes | als_pb2.StreamAccessLogsMessage],
        context: Any,
    ) -> als_pb2.StreamAccessLogsResponse:
        async for raw in request_iterator:
            try:
                if isinstance(raw, bytes):
                    if not self._response_steps(self._snapshot()):
                        continue  # nothing to count: skip decoding entirely
                    message = als_pb2.StreamAccessLogsMessage.FromString(raw)
                else:
                    message = raw
                await self.process(message)
            except Exception:
                log.exception("could not process an access-log message; continuing the stream")
        return als_pb2.StreamAccessLogsResponse()

    async def process(self, message: als_pb2.StreamAccessLogsMessage) -> None:
        snapshot = self._snapshot()
        steps = self._response_steps(snapshot)
        batches: dict[str, _PolicyBatch] = {}
        ignored = 0
        for entry in message.http_logs.log_entry:
            if not steps:
                ignored += 1
                continue
            counted = self._entry(entry, snapshot, steps, batches)
            if not counted:
                ignored += 1
        if ignored:
            self._outcomes["ignored"].inc(ignored)
        for batch in batches.values():
            await self._run(batch)

    # -- one entry -------------------------------------------------------------------

    def _entry(
        self,
        entry: HTTPAccessLogEntry,
        snapshot: PolicySnapshot,
        steps: Mapping[str, CohortStep],
        batches: dict[str, _PolicyBatch],
    ) -> bool:
        common = entry.common_properties
        if common.intermediate_log_entry:
            return False  # a long stream's progress report, not a finished request
        status = entry.response.response_code.value
        if not status:
            return False  # no response was sent (reset, timeout before headers)
        facts = _ext_authz_facts(common.metadata.filter_metadata)
        request = entry.request
        host = normalize_host(request.authority)
        policy = snapshot.index.by_id.get(facts.get("policy", "")) if facts else None
        if policy is None:
            policy = snapshot.index.bind(host, {})
        if policy is None:
            return False
        step = steps.get(policy.id)
        if step is None:
            return False
        ctx = _context(entry, host, facts, policy)
        seen_at = common.start_time.seconds + common.start_time.nanos / 1e9
        items = step.count_response(ctx, status, seen_at)
        if not items:
            return False
        batch = batches.get(policy.id)
        if batch is None:
            batch = batches[policy.id] = _PolicyBatch(policy)
        for item in items:
            batch.ops.append(item.rule.count(item.key))
            batch.responses.append(_Response(step, ctx, status, item))
        return True

    # -- the store -------------------------------------------------------------------

    async def _run(self, batch: _PolicyBatch) -> None:
        policy = batch.policy
        plan = StorePlan(tuple(batch.ops), shadow=True)  # counting never denies; run it all
        entries = len({id(r.ctx) for r in batch.responses})
        try:
            results = await self._store.execute(plan)
        except StoreUnavailable as exc:
            if policy.failure_closed:
                self._outcomes["dropped"].inc(entries)
                self._dropped += entries
                if self._dropped == entries or self._dropped % 1000 < entries:
                    log.warning(
                        "store unavailable, dropped %d response count(s) of %s (failureMode closed; "
                        "%d dropped so far): %s",
                        len(plan.operations),
                        policy.id,
                        self._dropped,
                        exc.detail,
                    )
                return
            results = await self._fallback.execute(plan)
        self._outcomes["counted"].inc(entries)
        for response, result in zip(batch.responses, results, strict=True):
            if isinstance(result, CountResult):
                response.step.settle_response(response.ctx, response.status, response.item, result)

    def _response_steps(self, snapshot: PolicySnapshot) -> dict[str, CohortStep]:
        """Policies with response cohorts, found once per snapshot."""
        if snapshot.version != self._steps_version:
            steps: dict[str, CohortStep] = {}
            for pid, policy in snapshot.index.by_id.items():
                for step in policy.steps:
                    if isinstance(step, CohortStep) and step.response_rules:
                        steps[pid] = step
            self._steps = steps
            self._steps_version = snapshot.version
        return self._steps


def _ext_authz_facts(filter_metadata: Mapping[str, Struct]) -> dict[str, str]:
    if METADATA_NAMESPACE not in filter_metadata:
        return {}
    fields = filter_metadata[METADATA_NAMESPACE].fields
    return {
        name: value.string_value for name, value in fields.items() if value.HasField("string_value")
    }


def _address(address: Any) -> str:
    return str(address.socket_address.address) if address.HasField("socket_address") else ""


def _context(
    entry: HTTPAccessLogEntry, host: str, facts: Mapping[str, str], policy: CompiledPolicy
) -> RequestContext:
    request = entry.request
    raw_path = request.original_path or request.path
    path, query = split_path(raw_path)
    headers = {name.lower(): value for name, value in request.request_headers.items()}
    if request.user_agent:
        headers.setdefault("user-agent", request.user_agent)
    source = _address(entry.common_properties.downstream_remote_address)
    ctx = RequestContext(
        method=_METHODS.get(request.request_method, ""),
        path=normalize_path(path or "/"),
        raw_path=raw_path,
        query=query,
        host=host,
        headers=headers,
        body=b"",
        source_ip=source,
    )
    ctx.client_ip = facts.get("client_ip") or client_ip(
        source, request.forwarded_for or None, policy.xff_trusted_hops
    )
    ctx.subject = facts.get("subject") or None
    ctx.plan = facts.get("plan") or None
    ctx.api_key_id = facts.get("api_key") or None
    return ctx
