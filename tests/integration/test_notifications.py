"""Cohort notifications to real receivers: a local HTTP webhook and aiosmtpd.

The Check path (``Engine.decide``) produces the membership; the Notifier started
here delivers it. Receivers are real servers on loopback, so retries, signatures,
STARTTLS and AUTH run exactly as in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client import REGISTRY

from sidecar.cohorts.notify import Notifier, RetryPolicy
from sidecar.cohorts.smtp import SmtpSettings
from sidecar.compiled.policy import CompiledPolicy
from sidecar.pipeline.engine import Engine
from sidecar.stores.memory import MemoryStore
from tests.harness.ports import LOOPBACK, free_port
from tests.self_signed import self_signed_pem
from tests.unit.cohorts.support import compile_one, request

POLICY = """
apiVersion: abuse.sidecar.dev/v1alpha1
kind: AbusePolicy
metadata: {{name: reviews, namespace: shop}}
spec:
  cohorts:
    - name: review-spammers
      match: {{methods: [POST], paths: [/reviews]}}
      by: ip
      threshold: {threshold}
      period: 1h
      action: flag
      for: 1h
      notify: [security-team]
  notifications:
    - name: security-team
      {channel}
"""
SECRET = "webhook-shared-secret"
FAST_RETRY = RetryPolicy(attempts=4, base_s=0.05, factor=2.0, max_delay_s=0.2)


def notifications(channel: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "abuse_sidecar_notifications_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- a real webhook receiver -----------------------------------------------------------


@dataclass
class Received:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """Answers each POST with the next status of ``script`` (then 200), after ``delay``."""

    script: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.received.append(
                        Received(status, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@pytest.fixture
def webhook() -> Iterator[tuple[WebhookReceiver, str]]:
    receiver = WebhookReceiver()
    server = ThreadingHTTPServer((LOOPBACK, free_port()), receiver.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://{LOOPBACK}:{server.server_address[1]}/abuse"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def notifier_factory() -> AsyncIterator[Any]:
    started: list[Notifier] = []

    async def make(**kwargs: Any) -> Notifier:
        notifier = Notifier(retry=FAST_RETRY, **kwargs)
        await notifier.start()
        started.append(notifier)
        return notifier

    yield make
    for notifier in started:
        await notifier.aclose(grace_s=0.5)


def webhook_policy(url: str, threshold: int = 3) -> str:
    channel = f'webhook: {{url: "{url}", secret: {SECRET}}}'
    return POLICY.format(threshold=threshold, channel=channel)


async def spam(policy: CompiledPolicy, engine: Engine, ip: str, times: int) -> None:
    for _ in range(times):
        await engine.decide(
            request("POST", "/reviews", ip=ip, headers={"user-agent": "spam/1"}), policy
        )


# -- webhooks --------------------------------------------------------------------------


async def test_one_signed_delivery_per_membership_after_a_retry(
    webhook: tuple[WebhookReceiver, str], notifier_factory: Any
) -> None:
    receiver, url = webhook
    receiver.script = [500]
    notifier = await notifier_factory()
    policy = compile_one(webhook_policy(url), notifier)
    engine = Engine(MemoryStore(), MemoryStore())
    delivered, retried = notifications("webhook", "delivered"), notifications("webhook", "retried")

    await spam(policy, engine, "198.51.100.7", 10)  # joins at 3; 7 more as a member
    await eventually(lambda: any(r.status == 200 for r in receiver.received))
    await asyncio.sleep(0.5)  # nothing else may arrive

    assert [r.status for r in receiver.received] == [500, 200]
    first, second = receiver.received
    assert first.body == second.body
    assert first.headers["x-abuse-delivery"] == second.headers["x-abuse-delivery"]
    expected = hmac.new(SECRET.encode(), second.body, hashlib.sha256).hexdigest()
    assert second.headers["x-abuse-signature"] == f"sha256={expected}"
    assert second.headers["content-type"] == "application/json"
    payload = json.loads(second.body)
    assert payload["policy"] == "shop/reviews"
    assert payload["cohort"] == "review-spammers"
    assert payload["key"] == "ip=198.51.100.7"
    assert payload["count"] == 3
    assert payload["window"] == "1h"
    assert payload["sample"]["method"] == "POST"
    assert payload["sample"]["path"] == "/reviews"
    assert payload["firstSeen"] <= payload["lastSeen"]
    assert notifications("webhook", "delivered") - delivered == 1
    assert notifications("webhook", "retried") - retried == 1


async def test_a_receiver_that_refuses_is_not_retried(
    webhook: tuple[WebhookReceiver, str], notifier_factory: Any
) -> None:
    receiver, url = webhook
    receiver.script = [400]
    notifier = await notifier_factory()
    policy = compile_one(webhook_policy(url, threshold=1), notifier)
    failed = notifications("webhook", "failed")
    await spam(policy, Engine(MemoryStore(), MemoryStore()), "198.51.100.8", 1)
    await eventually(lambda: notifications("webhook", "failed") - failed == 1)
    assert [r.status for r in receiver.received] == [400]


async def test_a_slow_receiver_never_slows_the_check_path(
    webhook: tuple[WebhookReceiver, str], notifier_factory: Any
) -> None:
    receiver, url = webhook
    receiver.delay = 5.0
    notifier = await notifier_factory(concurrency=2, queue_size=8)
    policy = compile_one(webhook_policy(url, threshold=1), notifier)
    engine = Engine(MemoryStore(), MemoryStore())
    await spam(policy, engine, "192.0.2.250", 1)  # warm-up: first compile paths, first delivery
    slowest = 0.0
    started = time.perf_counter()
    for host in range(1, 41):  # 40 memberships: more than the queue holds
        began = time.perf_counter()
        decision = await engine.decide(request("POST", "/reviews", ip=f"192.0.2.{host}"), policy)
        slowest = max(slowest, time.perf_counter() - began)
        assert decision.flags == ("review-spammers",)
    total = time.perf_counter() - started
    assert total < 1.0, f"40 checks took {total:.3f}s while the receiver sleeps 5s"
    assert slowest < 0.05, f"slowest check took {slowest * 1000:.1f}ms"
    await eventually(lambda: len(receiver.received) >= 1, timeout=8)


# -- email -----------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = message_from_bytes(raw, policy=email_policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope, parsed))
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and (data.login, data.password) == (b"bot", b"p@ss"):
            self.logins.append(data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def smtp_server(tmp_path: Any) -> Iterator[Any]:
    controllers: list[Controller] = []

    def start(*, tls: bool) -> tuple[Mailbox, int, ssl.SSLContext | None]:
        mailbox = Mailbox()
        port = free_port()
        kwargs: dict[str, Any] = {}
        client_context: ssl.SSLContext | None = None
        if tls:
            cert, key = self_signed_pem("localhost")
            (tmp_path / "cert.pem").write_bytes(cert)
            (tmp_path / "key.pem").write_bytes(key)
            server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
            client_context = ssl.create_default_context(cadata=cert.decode())
            kwargs = {
                "tls_context": server_context,
                "require_starttls": True,
                "authenticator": mailbox.authenticate,
                "auth_required": True,
            }
        controller = Controller(mailbox, hostname=LOOPBACK, port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return mailbox, port, client_context

    yield start
    for controller in controllers:
        controller.stop()


EMAIL_CHANNEL = "email: {to: [secops@example.com, oncall@example.com]}"


async def test_email_is_delivered_as_text_and_html(smtp_server: Any, notifier_factory: Any) -> None:
    mailbox, port, _ = smtp_server(tls=False)
    settings = SmtpSettings.parse(f"smtp://{LOOPBACK}:{port}", "abuse-sidecar@example.com")
    notifier = await notifier_factory(smtp_settings=settings)
    policy = compile_one(POLICY.format(threshold=2, channel=EMAIL_CHANNEL), notifier)
    await spam(policy, Engine(MemoryStore(), MemoryStore()), "198.51.100.9", 5)
    await eventually(lambda: len(mailbox.messages) == 1)
    await asyncio.sleep(0.3)
    assert len(mailbox.messages) == 1
    envelope, message = mailbox.messages[0]
    assert envelope.mail_from == "abuse-sidecar@example.com"
    assert envelope.rcpt_tos == ["secops@example.com", "oncall@example.com"]
    assert message["Subject"] == (
        "[abuse-sidecar] ip=198.51.100.9 joined cohort review-spammers (shop/reviews)"
    )
    plain = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert "2 requests in 1h (threshold 2)" in plain.get_content()
    assert "POST /reviews from 198.51.100.9" in plain.get_content()
    assert "<b>review-spammers</b>" in rich.get_content()


async def test_email_over_starttls_with_auth(smtp_server: Any, notifier_factory: Any) -> None:
    mailbox, port, client_context = smtp_server(tls=True)
    parsed = SmtpSettings.parse(f"smtp://bot:p%40ss@{LOOPBACK}:{port}", "abuse@example.com")
    settings = SmtpSettings(
        host=parsed.host,
        port=parsed.port,
        implicit_tls=False,
        sender=parsed.sender,
        username=parsed.username,
        password=parsed.password,
        tls_context=client_context,
    )
    notifier = await notifier_factory(smtp_settings=settings)
    policy = compile_one(POLICY.format(threshold=1, channel=EMAIL_CHANNEL), notifier)
    await spam(policy, Engine(MemoryStore(), MemoryStore()), "198.51.100.10", 1)
    await eventually(lambda: len(mailbox.messages) == 1)
    assert mailbox.logins == ["bot"]


async def test_credentials_are_never_sent_without_tls(
    smtp_server: Any, notifier_factory: Any
) -> None:
    mailbox, port, _ = smtp_server(tls=False)  # offers no STARTTLS
    settings = SmtpSettings.parse(f"smtp://bot:p%40ss@{LOOPBACK}:{port}", "abuse@example.com")
    notifier = await notifier_factory(smtp_settings=settings)
    policy = compile_one(POLICY.format(threshold=1, channel=EMAIL_CHANNEL), notifier)
    failed = notifications("email", "failed")
    await spam(policy, Engine(MemoryStore(), MemoryStore()), "198.51.100.11", 1)
    await eventually(lambda: notifications("email", "failed") - failed == 1)
    assert mailbox.messages == []
