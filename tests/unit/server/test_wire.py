"""The hand-encoded CheckResponses decode, with the generated classes, to exactly
what the contract says (responses.py writes wire bytes for speed)."""

from __future__ import annotations

import json

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from sidecar import protowire
from sidecar.pipeline.verdict import Decision, Deny, Reason
from sidecar.server import responses

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _ok_headers(response: CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


def test_allow_carries_upstream_headers_removals_and_metadata() -> None:
    decision = Decision(
        allowed=True,
        policy="shop/reviews",
        subject="alice",
        plan="gold",
        api_key_id="k1",
        risk=40,
        flags=("review-spammers", "night-owls"),
        response_headers=(("ratelimit", '"a";r=1;t=2'),),
    )
    forged = {"x-abuse-reason": "x", "x-abuse-subject": "mallory", "x-abuse-shadow": "x"}
    response = CheckResponse.FromString(responses.render(decision, "203.0.113.9", forged))
    assert response.status.code == 0
    assert response.WhichOneof("http_response") == "ok_response"
    assert _ok_headers(response) == {
        "x-abuse-policy": "shop/reviews",
        "x-abuse-risk": "40",
        "x-abuse-subject": "alice",
        "x-abuse-plan": "gold",
        "x-abuse-flags": "review-spammers,night-owls",
    }
    assert all(
        h.append_action == HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        for h in response.ok_response.headers
    )
    assert set(response.ok_response.headers_to_remove) == {"x-abuse-reason", "x-abuse-shadow"}
    assert [
        (h.header.key, h.header.value) for h in response.ok_response.response_headers_to_add
    ] == [("ratelimit", '"a";r=1;t=2')]
    assert json_format.MessageToDict(response.dynamic_metadata) == {
        "policy": "shop/reviews",
        "decision": "allow",
        "client_ip": "203.0.113.9",
        "risk": 40.0,
        "subject": "alice",
        "plan": "gold",
        "api_key": "k1",
    }


def test_anonymous_allow_removes_every_forged_owned_header() -> None:
    forged = {name: "forged" for name in responses.OWNED_HEADERS}
    response = CheckResponse.FromString(
        responses.render(Decision(allowed=True, policy="a/b"), "::1", forged)
    )
    assert _ok_headers(response) == {"x-abuse-policy": "a/b", "x-abuse-risk": "0"}
    assert set(response.ok_response.headers_to_remove) == {
        "x-abuse-reason",
        "x-abuse-subject",
        "x-abuse-plan",
        "x-abuse-flags",
        "x-abuse-shadow",
    }


def test_a_clean_request_gets_no_removals_and_no_metadata_unless_asked() -> None:
    decision = Decision(allowed=True, policy="a/b", subject="alice")
    clean = {":path": "/", "x-request-id": "1"}
    response = CheckResponse.FromString(
        responses.render(decision, "192.0.2.1", clean, metadata=False)
    )
    assert _ok_headers(response) == {
        "x-abuse-policy": "a/b",
        "x-abuse-risk": "0",
        "x-abuse-subject": "alice",
    }
    assert list(response.ok_response.headers_to_remove) == []
    assert not response.HasField("dynamic_metadata")
    asked = CheckResponse.FromString(responses.render(decision, "192.0.2.1", clean))
    assert json_format.MessageToDict(asked.dynamic_metadata)["subject"] == "alice"


def test_denials_and_shadow_denials_always_carry_metadata() -> None:
    shadow = Deny(Reason.HONEYPOT, "honeypots", "x")
    for decision in (
        Decision(allowed=False, policy="a/b", deny=shadow),
        Decision(allowed=True, policy="a/b", shadow=shadow),
    ):
        response = CheckResponse.FromString(
            responses.render(decision, "192.0.2.1", {}, metadata=False)
        )
        meta = json_format.MessageToDict(response.dynamic_metadata)
        assert meta["policy"] == "a/b"
        assert meta["client_ip"] == "192.0.2.1"
        assert "honeypot" in (meta.get("reason"), meta.get("shadow_reason"))


def test_shadow_reports_the_would_be_reason() -> None:
    shadow = Deny(Reason.HONEYPOT, "honeypots", "x")
    response = CheckResponse.FromString(
        responses.render(Decision(allowed=True, policy="a/b", shadow=shadow), "1.2.3.4", {})
    )
    assert _ok_headers(response)["x-abuse-shadow"] == "honeypot"


def test_denials_carry_status_reason_headers_and_problem_json() -> None:
    deny = Deny(Reason.RATE_LIMITED, "login-per-ip", "Slow down.", headers=(("retry-after", "7"),))
    decision = Decision(
        allowed=False,
        policy="shop/reviews",
        deny=deny,
        response_headers=(("ratelimit-policy", '"login";q=10;w=60'),),
    )
    response = CheckResponse.FromString(responses.render(decision, "198.51.100.1", {}))
    denied = response.denied_response
    assert response.status.code == 7  # PERMISSION_DENIED
    assert denied.status.code == 429
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["x-abuse-reason"] == "rate_limited"
    assert headers["retry-after"] == "7"
    assert headers["ratelimit-policy"] == '"login";q=10;w=60'
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(denied.body) == {
        "type": "https://abuse.sidecar.dev/problems/rate_limited",
        "title": "Too many requests",
        "status": 429,
        "detail": "Slow down.",
        "policy": "shop/reviews",
        "rule": "login-per-ip",
    }
    assert json_format.MessageToDict(response.dynamic_metadata)["reason"] == "rate_limited"


def test_401_and_503_use_matching_grpc_codes() -> None:
    for reason, grpc_code in ((Reason.INVALID_CREDENTIALS, 16), (Reason.STORE_UNAVAILABLE, 14)):
        decision = Decision(allowed=False, policy="a/b", deny=Deny(reason, "r", "d"))
        response = CheckResponse.FromString(responses.render(decision, "", {}))
        assert response.status.code == grpc_code


def test_graphql_denials_have_a_graphql_shaped_body() -> None:
    deny = Deny(
        Reason.GRAPHQL_TOO_COMPLEX,
        "graphql.maxCost",
        "Too costly.",
        extensions={"cost": 2000, "maxCost": 1000},
    )
    response = CheckResponse.FromString(
        responses.render(Decision(allowed=False, policy="a/b", deny=deny), "", {})
    )
    assert json.loads(response.denied_response.body) == {
        "errors": [
            {
                "message": "Too costly.",
                "extensions": {"code": "GRAPHQL_TOO_COMPLEX", "cost": 2000, "maxCost": 1000},
            }
        ]
    }


@given(
    text,
    text,
    st.one_of(st.none(), text),
    st.integers(min_value=-5, max_value=500),
    st.lists(text, max_size=3),
)
def test_any_decision_round_trips(
    policy: str, ip: str, subject: str | None, risk: int, flags: list[str]
) -> None:
    decision = Decision(allowed=True, policy=policy, subject=subject, risk=risk, flags=tuple(flags))
    response = CheckResponse.FromString(responses.render(decision, ip, {}))
    headers = _ok_headers(response)
    assert headers["x-abuse-policy"] == policy
    assert headers["x-abuse-risk"] == str(min(100, max(0, risk)))
    if subject:
        assert headers["x-abuse-subject"] == subject
    meta = json_format.MessageToDict(response.dynamic_metadata)
    assert meta["client_ip"] == ip


@given(
    text,
    st.lists(st.tuples(text, st.text(max_size=300)), min_size=1, max_size=4),
    st.booleans(),
)
def test_response_headers_reach_the_client_on_every_kind_of_allow(
    policy: str, headers: list[tuple[str, str]], metadata: bool
) -> None:
    """RateLimit headers are written by hand on every rate-limited allow, with and
    without metadata (value lengths past 127 bytes take two-byte length prefixes)."""
    decision = Decision(
        allowed=True, policy=policy, subject="alice", response_headers=tuple(headers)
    )
    response = CheckResponse.FromString(
        responses.render(decision, "192.0.2.1", {}, metadata=metadata)
    )
    assert [
        (h.header.key, h.header.value) for h in response.ok_response.response_headers_to_add
    ] == headers
    assert all(
        h.append_action == HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        for h in response.ok_response.response_headers_to_add
    )
    assert _ok_headers(response) == {
        "x-abuse-policy": policy,
        "x-abuse-risk": "0",
        "x-abuse-subject": "alice",
    }
    assert response.HasField("dynamic_metadata") == metadata


@given(st.integers(min_value=0, max_value=2**63))
def test_varint_matches_protobuf(value: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

    assert protowire.varint(value) == _VarintBytes(value)


def test_no_policy_and_malformed_responses() -> None:
    none = CheckResponse.FromString(responses.allow_without_policy({}))
    assert _ok_headers(none) == {"x-abuse-policy": "none"}
    assert list(none.ok_response.headers_to_remove) == []
    forged = CheckResponse.FromString(responses.allow_without_policy({"x-abuse-plan": "gold"}))
    assert list(forged.ok_response.headers_to_remove) == ["x-abuse-plan"]
    unknown = CheckResponse.FromString(responses.allow_without_policy(None))
    assert "x-abuse-subject" in unknown.ok_response.headers_to_remove
    bad = CheckResponse.FromString(responses.malformed_request())
    assert bad.denied_response.status.code == 400
