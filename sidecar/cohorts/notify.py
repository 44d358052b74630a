"""The Notifier: membership events out to webhooks and mailboxes, off the Check path.

``submit`` is called from a Check and returns at once: it puts one delivery per
channel on a bounded queue, and when the queue is full the delivery is dropped
and counted (``abuse_sidecar_notifications_total{outcome="dropped"}``), because
a stuck receiver must never slow the traffic we protect. A dispatcher task hands
deliveries to at most ``concurrency`` delivery tasks; each retries its own
delivery with exponential backoff and jitter, so one slow receiver holds one
slot, not the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from sidecar.cohorts import mail, smtp, webhook
from sidecar.cohorts.events import MembershipEvent, NotificationTarget
from sidecar.cohorts.smtp import SmtpError, SmtpSettings
from sidecar.observability import metrics

log = logging.getLogger("sidecar.notify")

WEBHOOK = "webhook"
EMAIL = "email"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6
    base_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, asked: float | None = None) -> float:
        """Seconds before attempt ``attempt + 1`` (attempt counts from 1)."""
        if asked is not None:
            return min(asked, self.max_delay_s)
        ceiling = min(self.max_delay_s, self.base_s * self.factor ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str  # webhook | email
    target: NotificationTarget
    event: MembershipEvent


class Notifier:
    def __init__(
        self,
        *,
        smtp_settings: SmtpSettings | None = None,
        queue_size: int = 1000,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        http_timeout_s: float = 5.0,
    ) -> None:
        self._smtp = smtp_settings
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_size)
        self._slots = asyncio.Semaphore(concurrency)
        self._retry = retry or RetryPolicy()
        self._http_timeout = http_timeout_s
        self._client: httpx.AsyncClient | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._dropped = 0
        self._counters = {
            (channel, outcome): metrics.NOTIFICATIONS.labels(channel, outcome)
            for channel in (WEBHOOK, EMAIL)
            for outcome in ("delivered", "retried", "failed", "dropped")
        }

    # -- the Check path ------------------------------------------------------------

    def submit(self, event: MembershipEvent, targets: Sequence[NotificationTarget]) -> None:
        for target in targets:
            if target.webhook_url:
                self._enqueue(Delivery(WEBHOOK, target, event))
            if target.email_to:
                self._enqueue(Delivery(EMAIL, target, event))

    def _enqueue(self, delivery: Delivery) -> None:
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._count(delivery.channel, "dropped")
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "notification queue full (%d waiting): dropped %s notification %s for %s/%s "
                    "(%d dropped so far); receivers are too slow or unreachable",
                    self._queue.qsize(),
                    delivery.channel,
                    delivery.target.name,
                    delivery.event.policy,
                    delivery.event.cohort,
                    self._dropped,
                )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._dispatcher is not None:
            return
        self._client = httpx.AsyncClient(timeout=self._http_timeout, follow_redirects=False)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="notifier")

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Give queued and running deliveries ``grace_s`` to finish, then stop."""
        if self._dispatcher is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._queue.join()
        self._dispatcher.cancel()
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(self._dispatcher, *self._deliveries, return_exceptions=True)
        self._dispatcher = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._deliveries)

    # -- delivery ------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            delivery = await self._queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._deliver(delivery))
            self._deliveries.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        self._slots.release()
        self._queue.task_done()

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            if delivery.channel == WEBHOOK:
                await self._deliver_webhook(delivery)
            else:
                await self._deliver_email(delivery)
        except Exception:
            self._count(delivery.channel, "failed")
            log.exception(
                "notification %s (%s) failed unexpectedly", delivery.target.name, delivery.channel
            )

    async def _deliver_webhook(self, delivery: Delivery) -> None:
        assert self._client is not None  # started before the first delivery
        target, event = delivery.target, delivery.event
        url = target.webhook_url or ""
        body = webhook.render_body(event)
        for attempt in range(1, self._retry.attempts + 1):
            outcome = await webhook.post(self._client, url, target.webhook_secret, event, body)
            if outcome.delivered:
                self._count(WEBHOOK, "delivered")
                log.info(
                    "webhook %s notified: %s joined %s/%s",
                    target.name,
                    event.key,
                    event.policy,
                    event.cohort,
                )
                return
            if not outcome.retry or attempt == self._retry.attempts:
                self._count(WEBHOOK, "failed")
                log.warning(
                    "webhook %s gave up after %d attempt(s): %s",
                    target.name,
                    attempt,
                    outcome.detail,
                )
                return
            self._count(WEBHOOK, "retried")
            delay = self._retry.delay(attempt, outcome.retry_after)
            log.info("webhook %s: %s; retrying in %.1fs", target.name, outcome.detail, delay)
            await asyncio.sleep(delay)

    async def _deliver_email(self, delivery: Delivery) -> None:
        target, event = delivery.target, delivery.event
        if self._smtp is None:
            self._count(EMAIL, "failed")
            log.error(
                "notification %s has email recipients but no SMTP server is configured "
                "(set --smtp-url / ABUSE_SIDECAR_SMTP_URL)",
                target.name,
            )
            return
        message = mail.build_message(event, self._smtp.sender, target.email_to)
        for attempt in range(1, self._retry.attempts + 1):
            try:
                await smtp.send(self._smtp, message)
            except SmtpError as exc:
                if not exc.retry or attempt == self._retry.attempts:
                    self._count(EMAIL, "failed")
                    log.warning(
                        "email %s gave up after %d attempt(s): %s", target.name, attempt, exc
                    )
                    return
                self._count(EMAIL, "retried")
                delay = self._retry.delay(attempt)
                log.info("email %s: %s; retrying in %.1fs", target.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._count(EMAIL, "delivered")
            log.info(
                "email %s sent to %d recipient(s): %s joined %s/%s",
                target.name,
                len(target.email_to),
                event.key,
                event.policy,
                event.cohort,
            )
            return

    def _count(self, channel: str, outcome: str) -> None:
        self._counters[(channel, outcome)].inc()
