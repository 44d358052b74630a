"""RateLimit-Policy / RateLimit / Retry-After rendering (draft-ietf-httpapi-ratelimit-headers-11)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.ratelimit import headers


def test_items_follow_the_draft_syntax() -> None:
    assert headers.policy_item("login-per-ip", 10, 60) == '"login-per-ip";q=10;w=60'
    assert headers.limit_item("login-per-ip", 3, 42) == '"login-per-ip";r=3;t=42'


def test_several_limits_make_one_list_per_field() -> None:
    fields = headers.rate_limit_headers(
        [headers.policy_item("a", 10, 60), headers.policy_item("graphql.costBudget", 5000, 3600)],
        [headers.limit_item("a", 0, 7), headers.limit_item("graphql.costBudget", 4100, 1800)],
    )
    assert fields == (
        ("RateLimit-Policy", '"a";q=10;w=60, "graphql.costBudget";q=5000;w=3600'),
        ("RateLimit", '"a";r=0;t=7, "graphql.costBudget";r=4100;t=1800'),
    )


def test_no_items_no_fields() -> None:
    assert headers.rate_limit_headers([], []) == ()


@pytest.mark.parametrize(
    ("ms", "seconds"), [(0, 0), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_999, 60)]
)
def test_seconds_round_up(ms: int, seconds: int) -> None:
    assert headers.seconds(ms) == seconds


def test_retry_after_is_at_least_one_second() -> None:
    assert headers.retry_after(0) == ("Retry-After", "1")
    assert headers.retry_after(1_500) == ("Retry-After", "2")


def test_negative_values_are_clamped() -> None:
    assert headers.limit_item("x", -1, -5) == '"x";r=0;t=0'


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_sf_string_round_trips(value: str) -> None:
    encoded = headers.sf_string(value)
    assert encoded.startswith('"')
    assert encoded.endswith('"')
    inner = encoded[1:-1]
    # Unescape as an RFC 9651 parser does: a backslash takes the next character.
    decoded, index = [], 0
    while index < len(inner):
        if inner[index] == "\\":
            assert inner[index + 1] in '"\\'
            index += 1
        else:
            assert inner[index] != '"'
        decoded.append(inner[index])
        index += 1
    assert "".join(decoded) == value


@pytest.mark.parametrize("value", ["caf\u00e9", "tab\there", "new\nline"])
def test_sf_string_refuses_what_it_cannot_carry(value: str) -> None:
    with pytest.raises(ValueError, match="structured-field string"):
        headers.sf_string(value)
