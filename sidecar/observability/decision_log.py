"""Decision logs: one line per deny (and per allow at debug), never a secret.

Two layers keep credentials and bodies out of the logs:

1. An allowlist. A ``DecisionRecord`` has exactly the fields below, each taken
   from a Decision or from what the pipeline established (client IP, subject),
   never from a header value or the body. There is no field through which a
   header, a cookie or a body could reach the decision log.
2. A scrubber on every log line of the process (``RedactSecrets``, a
   ``logging.Filter`` on the root logger's handlers), for the day some other
   code logs a request by mistake: bearer/basic credentials, JWTs, and the value
   after any credential-like name (``Authorization``, ``Cookie``, ``X-API-Key``,
   ``token=``, ``password:`` ...) become ``[REDACTED]``.

Fields: time (the log formatter's), ``trace_id``/``span_id`` (our span when the
Check was traced, else the client's ``traceparent``), ``request_id`` (Envoy's
``x-request-id``), ``decision``, ``status``, ``policy``, ``rule``, ``reason``,
``shadow`` (shadow mode: the would-be deny), ``client_ip``, ``subject``,
``plan``, ``risk``, ``flags``, ``method``, ``host``, ``path`` (normalised, no
query string).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import REASONS, Decision

if TYPE_CHECKING:
    from sidecar.observability.tracing import CheckTrace

LOGGER_NAME = "sidecar.decisions"
REDACTED = "[REDACTED]"
# Bounds what an attacker-chosen path or host can make one log line cost.
MAX_FIELD_CHARS = 256

_HEX = frozenset("0123456789abcdef")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """Everything a decision log line may contain, and nothing else."""

    decision: str  # allow | deny
    status: int
    policy: str
    rule: str | None
    reason: str | None
    shadow: str | None
    client_ip: str | None
    subject: str | None
    plan: str | None
    risk: int
    flags: list[str] | None
    method: str
    host: str
    path: str
    trace_id: str | None
    span_id: str | None
    request_id: str | None

    @classmethod
    def of(
        cls, ctx: RequestContext, decision: Decision, trace: CheckTrace | None
    ) -> DecisionRecord:
        deny = decision.deny
        if trace is not None:
            trace_id: str | None = trace.trace_id_hex
            span_id: str | None = trace.span_id_hex
        else:
            trace_id, span_id = client_trace_ids(ctx.headers.get("traceparent"))
        request_id = ctx.headers.get("x-request-id")
        return cls(
            decision="allow" if deny is None else "deny",
            status=REASONS[deny.reason].status if deny is not None else 200,
            policy=decision.policy,
            rule=deny.rule
            if deny is not None
            else (decision.shadow.rule if decision.shadow else None),
            reason=deny.reason.value if deny is not None else None,
            shadow=decision.shadow.reason.value if decision.shadow is not None else None,
            client_ip=ctx.client_ip or ctx.source_ip or None,
            subject=decision.subject,
            plan=decision.plan,
            risk=decision.risk,
            flags=list(decision.flags) or None,
            method=ctx.method[:16],
            host=ctx.host[:MAX_FIELD_CHARS],
            path=ctx.path[:MAX_FIELD_CHARS],
            trace_id=trace_id,
            span_id=span_id,
            request_id=request_id if request_id and _REQUEST_ID.fullmatch(request_id) else None,
        )

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def summary(self) -> str:
        """One human line for ``--log-format text``."""
        return " ".join(f"{k}={v}" for k, v in self.fields().items())


def client_trace_ids(traceparent: str | None) -> tuple[str | None, str | None]:
    """Trace and parent span id of a W3C ``traceparent`` (version-format-independent
    positions), or (None, None) when it is not one. Only for logs: the tracer validates
    fully."""
    if not traceparent or len(traceparent) < 55 or traceparent[2] != "-" or traceparent[35] != "-":
        return None, None
    trace_id, span_id = traceparent[3:35], traceparent[36:52]
    if not (set(trace_id) <= _HEX and set(span_id) <= _HEX) or trace_id == "0" * 32:
        return None, None
    return trace_id, span_id


class DecisionLog:
    """Writes decision lines to the ``sidecar.decisions`` logger.

    Built once from the settings: whether allows are logged (the logger is enabled
    for DEBUG) and the line shape (JSON fields or a text summary) are decided here,
    so an allow costs one branch when they are not."""

    def __init__(self, *, json_fields: bool = True, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(LOGGER_NAME)
        self._json = json_fields
        self._allows = self._log.isEnabledFor(logging.DEBUG)

    def record(self, ctx: RequestContext, decision: Decision, trace: CheckTrace | None) -> None:
        if decision.deny is None and decision.shadow is None:
            if not self._allows:
                return
            level = logging.DEBUG
        else:
            level = logging.INFO  # a deny, or what shadow mode would have denied
        entry = DecisionRecord.of(ctx, decision, trace)
        if self._json:
            self._log.log(level, entry.decision, extra=entry.fields())
        else:
            self._log.log(level, "%s", entry.summary())


# -- the second line of defence -------------------------------------------------------

# A credential-like name: Authorization, Cookie, X-API-Key, x-customer-key, api_key,
# access_token, client-secret, password, X-Auth-Token, session id, signature ...
# (A bare ``key`` is not one: protobuf text and store debug lines use it for names.)
_CREDENTIAL_NAME = re.compile(
    r"[\w-]*(?:authorization|auth|cookie|token|secret|passw(?:or)?d|session(?:[_-]?id)?"
    r"|credentials?|signature|jwt|bearer)|[\w-]+key",
    re.IGNORECASE,
)
# Every pattern below starts only where a run of name characters starts and
# bounds what it scans, so a hostile line costs time linear in its length.
_NAME_VALUE = re.compile(
    r"(?<![\w-])(?P<q>[\"']?)(?P<name>[\w-]{1,64})(?P=q)(?P<sep>\s*[:=]\s*)(?!\[REDACTED\])"
    r"(?:(?P<quote>\")(?:\\.|[^\"\\])*\"|(?P<squote>')(?:\\.|[^'\\])*'"
    r"|[^\s,;&}\])\"']+(?:[ \t]+[^\s,;&}\])\"']+)?)"
)
# Protobuf text format of a header map entry: key: "x-api-key" value: "..."
_PROTO_ENTRY = re.compile(
    r'(?P<head>\bkey:\s*"(?P<name>[\w-]{1,64})"\s*(?:raw_)?value:\s*)"(?:\\.|[^"\\])*"'
)
_SCHEME = re.compile(
    r"(?<![\w-])(?P<scheme>Bearer|Basic|Digest|Negotiate|NTLM|ApiKey|Token|DPoP)[ \t]+"
    r"[A-Za-z0-9._~+/=-]{8,}",
    re.IGNORECASE,
)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_COOKIE_HEADER = re.compile(r"(?<![\w-])((?:set-)?cookie[ \t]*[:=][ \t]*)[^\r\n]+", re.IGNORECASE)
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


def _redact_values(text: str) -> str:
    """Replace the value after every credential-like name. A name that is not one
    gives back only itself and its separator: its value is scanned in turn (in
    ``note: GET /x?access_token=...`` the token is found inside ``note``'s value)."""
    out: list[str] = []
    position = 0
    while (match := _NAME_VALUE.search(text, position)) is not None:
        if _CREDENTIAL_NAME.fullmatch(match["name"]):
            quote = match["quote"] or match["squote"] or ""
            out.append(text[position : match.end("sep")] + quote + REDACTED + quote)
            position = match.end()
        else:
            out.append(text[position : match.end("sep")])
            position = match.end("sep")
    out.append(text[position:])
    return "".join(out)


def _proto_entry(match: re.Match[str]) -> str:
    if not _CREDENTIAL_NAME.fullmatch(match["name"]):
        return match[0]
    return f'{match["head"]}"{REDACTED}"'


def scrub(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by [REDACTED]."""
    text = _PROTO_ENTRY.sub(_proto_entry, text)
    text = _COOKIE_HEADER.sub(lambda m: m[1] + REDACTED, text)
    text = _redact_values(text)
    text = _SCHEME.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    return _JWT.sub(REDACTED, text)


class RedactSecrets(logging.Filter):
    """Scrubs every record passing a handler: message, arguments, extra fields and
    the formatted exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()  # formatted once; the formatter won't again
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and isinstance(value, str):
                record.__dict__[key] = scrub(value)
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned = scrub(text)
            if cleaned != text:
                # The formatters render exc_text (text) or an ``exception`` field (JSON);
                # dropping exc_info keeps the raw traceback from being formatted again.
                record.exc_info, record.exc_text = None, cleaned
                record.__dict__["exception"] = cleaned
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put the scrubber on every handler of ``logger`` (default: root), once.

    On handlers rather than the logger: a logger's filters only see records logged
    to that very logger, a handler's see every record that reaches it."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        for existing in handler.filters:
            if isinstance(existing, RedactSecrets):
                break
        else:
            handler.addFilter(RedactSecrets())
