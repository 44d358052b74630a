"""What notifications say: webhook body and signature, email text and HTML."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
from email.message import EmailMessage

from hypothesis import given
from hypothesis import strategies as st

from sidecar.cohorts import mail, webhook
from sidecar.cohorts.events import FirstSeen, MembershipEvent, SampleRequest, display_key

EPOCH = 1_700_000_000.0


def event(
    key: str = "ip=203.0.113.7", path: str = "/login", agent: str | None = "curl/8"
) -> MembershipEvent:
    return MembershipEvent.new(
        policy="shop/login",
        cohort="credential-stuffers",
        key=key,
        action="block",
        source="responses",
        count=20,
        threshold=20,
        window="10m",
        window_seconds=600,
        membership="1h",
        membership_seconds=3600,
        first_seen=EPOCH - 300,
        last_seen=EPOCH,
        sample=SampleRequest("POST", path, "api.example.com", "203.0.113.7", None, agent, 401),
    )


def test_signature_is_rfc_4231_hmac_sha256() -> None:
    # RFC 4231 test case 2.
    assert webhook.signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_webhook_body_is_the_event_json_and_verifies_with_the_secret() -> None:
    ev = event()
    body = webhook.render_body(ev)
    parsed = json.loads(body)
    assert parsed["event"] == "cohort.joined"
    assert parsed["id"] == ev.id
    assert parsed["firstSeen"] == "2023-11-14T22:08:20Z"
    assert parsed["lastSeen"] == "2023-11-14T22:13:20Z"
    assert parsed["expiresAt"] == "2023-11-14T23:13:20Z"
    assert parsed["sample"]["status"] == 401
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert webhook.signature("k", body) == f"sha256={expected}"


def test_sensitive_dimensions_are_shown_as_digests() -> None:
    sensitive = frozenset({"header:cookie"})
    shown = display_key("header:cookie=session=abc|ip=1.2.3.4", sensitive)
    assert shown.startswith("header:cookie=sha256:")
    assert shown.endswith("|ip=1.2.3.4")
    assert "abc" not in shown
    assert display_key("ip=1.2.3.4", frozenset()) == "ip=1.2.3.4"


def test_first_seen_is_the_first_event_of_the_window_else_the_window_start() -> None:
    seen = FirstSeen(capacity=2)
    seen.note("c", "k", 100.0, 60)
    seen.note("c", "k", 130.0, 60)
    assert seen.pop("c", "k", 150.0, 60) == 100.0
    # Unknown (evicted or never seen here): the start of the window.
    assert seen.pop("c", "k", 150.0, 60) == 90.0
    seen.note("c", "a", 1.0, 60)
    seen.note("c", "b", 2.0, 60)
    seen.note("c", "c", 3.0, 60)  # evicts "a", the oldest
    assert seen.pop("c", "a", 10.0, 60) == -50.0
    assert seen.pop("c", "b", 10.0, 60) == 2.0


def _parts(message: EmailMessage) -> tuple[str, str]:
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    plain = parsed.get_body(("plain",))
    rich = parsed.get_body(("html",))
    assert plain is not None
    assert rich is not None
    return str(plain.get_content()), str(rich.get_content())


def test_email_has_readable_text_and_html() -> None:
    ev = event()
    message = mail.build_message(
        ev, "abuse@example.com", ("secops@example.com", "oncall@example.com")
    )
    assert message["Subject"] == (
        "[abuse-sidecar] ip=203.0.113.7 joined cohort credential-stuffers (shop/login)"
    )
    assert message["To"] == "secops@example.com, oncall@example.com"
    plain, rich = _parts(message)
    assert "ip=203.0.113.7 entered the cohort credential-stuffers of policy shop/login." in plain
    assert "20 responses in 10m (threshold 20)" in plain
    assert "POST /login → 401 from 203.0.113.7 to api.example.com" in plain
    assert "403 (cohort_blocked)" in plain
    assert (
        "DELETE /cohorts/members?policy=shop%2Flogin&cohort=credential-stuffers&key=ip%3D203.0.113.7"
        in plain
    )
    assert "<table>" in rich
    assert "credential-stuffers" in rich


hostile = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=80)


@given(key=hostile, path=hostile, agent=hostile)
def test_traffic_values_cannot_inject_markup_or_headers(key: str, path: str, agent: str) -> None:
    ev = event(key=f"header:x-user={key}", path=path, agent=agent)
    message = mail.build_message(ev, "abuse@example.com", ("secops@example.com",))
    subject = str(message["Subject"])
    assert "\n" not in subject
    assert "\r" not in subject
    _, rich = _parts(message)
    # Every "<" in the HTML is ours: the markup tags, never traffic.
    for fragment in rich.split("<")[1:]:
        tag = fragment.split(">", 1)[0].lstrip("/!").split(" ", 1)[0].lower()
        assert tag in {"doctype", "html", "body", "p", "b", "table", "tr", "th", "td"}, fragment[
            :40
        ]
