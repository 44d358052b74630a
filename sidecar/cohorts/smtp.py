"""SMTP delivery from ``--smtp-url smtp[s]://[user:pass@]host:port`` and ``--smtp-from``.

``smtps://`` speaks TLS from the first byte (port 465 by default). ``smtp://``
(port 25 by default) upgrades with STARTTLS whenever the server offers it.
Credentials are only ever sent over TLS: a server that offers no STARTTLS to a
configuration with a user name is an error, not a reason to log in in clear text.

smtplib is blocking, so each message is sent from a worker thread.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sidecar.errors import ConfigurationError

DEFAULT_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    implicit_tls: bool  # smtps://
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, url: str, sender: str | None) -> SmtpSettings:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ConfigurationError(
                f"--smtp-url must start with smtp:// or smtps://, not {scheme or url!r}"
            )
        if not parts.hostname:
            raise ConfigurationError("--smtp-url has no host: use smtp[s]://[user:pass@]host:port")
        try:
            port = parts.port or (465 if scheme == "smtps" else 25)
        except ValueError as exc:
            raise ConfigurationError(f"--smtp-url has an invalid port: {exc}") from None
        from_address = sender or f"abuse-sidecar@{socket.getfqdn() or 'localhost'}"
        if "@" not in from_address or any(c in from_address for c in "\r\n"):
            raise ConfigurationError(f"--smtp-from {from_address!r} is not an email address")
        return cls(
            host=parts.hostname,
            port=port,
            implicit_tls=scheme == "smtps",
            sender=from_address,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def describe(self) -> str:
        """For logs: never the password."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


class SmtpError(Exception):
    """Sending failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, detail: str, *, retry: bool) -> None:
        super().__init__(detail)
        self.retry = retry


def _context(settings: SmtpSettings) -> ssl.SSLContext:
    return settings.tls_context or ssl.create_default_context()


def send_blocking(settings: SmtpSettings, message: EmailMessage) -> None:
    try:
        client: smtplib.SMTP
        if settings.implicit_tls:
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout_s, context=_context(settings)
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
        with client:
            client.ehlo()
            secure = settings.implicit_tls
            if not secure and client.has_extn("starttls"):
                client.starttls(context=_context(settings))
                client.ehlo()
                secure = True
            if settings.username:
                if not secure:
                    raise SmtpError(
                        f"{settings.describe()} offers no STARTTLS; refusing to send credentials "
                        "in clear text (use smtps:// or enable STARTTLS on the server)",
                        retry=False,
                    )
                client.login(settings.username, settings.password or "")
            client.send_message(message)
    except SmtpError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise SmtpError(
            f"{settings.describe()} refused the credentials: {exc.smtp_code}", retry=False
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise SmtpError(f"{settings.describe()} refused every recipient", retry=False) from exc
    except smtplib.SMTPResponseException as exc:
        # 4xx: try again later; 5xx: permanent.
        raise SmtpError(
            f"{settings.describe()} answered {exc.smtp_code}", retry=400 <= exc.smtp_code < 500
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise SmtpError(
            f"{settings.describe()}: {exc.__class__.__name__}: {exc}", retry=True
        ) from exc


async def send(settings: SmtpSettings, message: EmailMessage) -> None:
    await asyncio.to_thread(send_blocking, settings, message)
