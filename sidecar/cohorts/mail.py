"""The membership email: plain text and HTML alternatives, no template engine.

Every value in the message comes from traffic (keys, paths, user agents) and so
from whoever sent that traffic: the HTML part escapes all of it, and the subject
line drops control characters so a value cannot add header lines.
"""

from __future__ import annotations

import email.policy
import html
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlencode

from sidecar.cohorts.events import MembershipEvent, iso

_SUBJECT_MAX = 160
# RFC 5322 allows 998-character lines: folding at 78 would start the subject with a
# space on many clients.
_POLICY = email.policy.SMTP.clone(max_line_length=998)

_CONSEQUENCE = {
    "flag": "requests are allowed and marked for the upstream with x-abuse-flags: {cohort}.",
    "throttle": "requests are answered 429 (cohort_throttled) on every route of the policy.",
    "block": "requests are answered 403 (cohort_blocked) on every route of the policy.",
}


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)


def subject_line(event: MembershipEvent) -> str:
    text = _one_line(f"[abuse-sidecar] {event.key} joined cohort {event.cohort} ({event.policy})")
    return text if len(text) <= _SUBJECT_MAX else text[: _SUBJECT_MAX - 1] + "…"


def _rows(event: MembershipEvent) -> list[tuple[str, str]]:
    sample = event.sample
    counted = "responses" if event.source == "responses" else "requests"
    request = f"{sample.method} {sample.path}"
    if sample.status is not None:
        request += f" → {sample.status}"
    request += f" from {sample.client_ip}"
    if sample.host:
        request += f" to {sample.host}"
    rows = [
        ("Policy", event.policy),
        ("Cohort", f"{event.cohort} (action: {event.action})"),
        ("Key", event.key),
        ("Count", f"{event.count} {counted} in {event.window} (threshold {event.threshold})"),
        ("First seen", iso(event.first_seen)),
        ("Last seen", iso(event.last_seen)),
        ("Member until", f"{iso(event.expires_at)} ({event.membership})"),
        ("Sample request", request),
    ]
    if sample.subject:
        rows.append(("Subject", sample.subject))
    if sample.user_agent:
        rows.append(("User agent", sample.user_agent))
    rows.append(("Event id", event.id))
    return rows


def _consequence(event: MembershipEvent) -> str:
    return "Until then, " + _CONSEQUENCE.get(event.action, "").format(cohort=event.cohort)


def _remedy(event: MembershipEvent) -> str:
    query = urlencode({"policy": event.policy, "cohort": event.cohort, "key": event.key})
    return (
        f"To end the membership now: DELETE /cohorts/members?{query} on the sidecar's admin port."
    )


def plain_text(event: MembershipEvent) -> str:
    rows = _rows(event)
    width = max(len(label) for label, _ in rows) + 1
    lines = [
        f"{event.key} entered the cohort {event.cohort} of policy {event.policy}.",
        "",
        *(f"{(label + ':').ljust(width)} {_one_line(value)}" for label, value in rows),
        "",
        _consequence(event),
        _remedy(event),
        "",
        "-- abuse-sidecar",
    ]
    return "\n".join(lines) + "\n"


def html_text(event: MembershipEvent) -> str:
    e = html.escape
    cells = "\n".join(
        f'<tr><th align="left" style="padding:4px 12px 4px 0;color:#555">{e(label)}</th>'
        f'<td style="padding:4px 0;font-family:monospace">{e(value)}</td></tr>'
        for label, value in _rows(event)
    )
    return (
        '<!DOCTYPE html>\n<html><body style="font-family:sans-serif;font-size:14px">\n'
        f"<p><b>{e(event.key)}</b> entered the cohort <b>{e(event.cohort)}</b> "
        f"of policy <b>{e(event.policy)}</b>.</p>\n"
        f"<table>\n{cells}\n</table>\n"
        f"<p>{e(_consequence(event))}</p>\n"
        f'<p style="color:#555">{e(_remedy(event))}</p>\n'
        '<p style="color:#999">abuse-sidecar</p>\n</body></html>\n'
    )


def build_message(event: MembershipEvent, sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = subject_line(event)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(idstring=event.id, domain=sender.rpartition("@")[2] or None)
    message["X-Abuse-Event-Id"] = event.id
    message.set_content(plain_text(event))
    message.add_alternative(html_text(event), subtype="html")
    return message
