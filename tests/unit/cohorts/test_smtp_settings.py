"""``--smtp-url`` and ``--smtp-from`` parsing."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.cohorts.smtp import SmtpSettings
from sidecar.errors import ConfigurationError


def test_plain_smtp_defaults_to_port_25_and_starttls_when_offered() -> None:
    s = SmtpSettings.parse("smtp://mail.example.com", "abuse@example.com")
    assert (s.host, s.port, s.implicit_tls, s.username, s.password) == (
        "mail.example.com",
        25,
        False,
        None,
        None,
    )


def test_smtps_defaults_to_465_with_credentials() -> None:
    s = SmtpSettings.parse("smtps://bot:p%40ss@mail.example.com", "abuse@example.com")
    assert (s.port, s.implicit_tls, s.username, s.password) == (465, True, "bot", "p@ss")
    assert "p@ss" not in repr(s)
    assert "p@ss" not in s.describe()


@pytest.mark.parametrize(
    ("url", "sender", "message"),
    [
        ("http://mail.example.com", "a@b", "smtp:// or smtps://"),
        ("smtp://", "a@b", "no host"),
        ("smtp://mail.example.com:99999", "a@b", "invalid port"),
        ("smtp://mail.example.com", "not-an-address", "not an email address"),
        ("smtp://mail.example.com", "a@b\r\nBcc: x@y", "not an email address"),
    ],
)
def test_bad_settings_are_named(url: str, sender: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SmtpSettings.parse(url, sender)


@given(
    user=st.text(min_size=1, max_size=20),
    password=st.text(min_size=1, max_size=20),
    port=st.integers(1, 65535),
)
def test_percent_encoded_credentials_round_trip(user: str, password: str, port: int) -> None:
    url = f"smtp://{quote(user, safe='')}:{quote(password, safe='')}@mail.example.com:{port}"
    s = SmtpSettings.parse(url, "abuse@example.com")
    assert (s.username, s.password, s.port) == (user, password, port)
