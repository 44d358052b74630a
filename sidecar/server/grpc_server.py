"""The gRPC server: Check, Explain, health and reflection on one port.

Shutdown: health flips to NOT_SERVING first (so Envoy's health checks and load
balancers move away), then in-flight RPCs get ``grace`` seconds to finish.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.api import explain_pb2, explain_pb2_grpc
from sidecar.server.authz import Authorizer, lenient_check_request
from sidecar.server.explain import ExplainService

log = logging.getLogger("sidecar.grpc")

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


class GrpcServer:
    def __init__(
        self, authorizer: Authorizer, listen: str, extra_services: list[object] | None = None
    ) -> None:
        self._authorizer = authorizer
        self._listen = listen
        self._extra = extra_services or []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        # Registered by hand so an undecodable CheckRequest reaches our handler
        # (and gets a 400) instead of failing the RPC inside gRPC. A registered
        # method (as generated code registers them), not a generic handler: gRPC
        # core then matches the method itself instead of handing every call to the
        # generic path and a lookup in Python.
        check = grpc.unary_unary_rpc_method_handler(
            self._authorizer.check,
            request_deserializer=lenient_check_request,
            response_serializer=None,  # the handler answers with encoded bytes (responses.py)
        )
        server.add_registered_method_handlers(AUTHZ_SERVICE, {"Check": check})
        explain_pb2_grpc.add_ExplainerServicer_to_server(ExplainService(self._authorizer), server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            AUTHZ_SERVICE,
            explain_pb2.DESCRIPTOR.services_by_name["Explainer"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        for register in self._extra:
            names.append(register(server))  # type: ignore[operator]
        reflection.enable_server_reflection(names, server)
        self.port = server.add_insecure_port(self._listen)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {self._listen}")
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(AUTHZ_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC listening on %s", self._listen)

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
