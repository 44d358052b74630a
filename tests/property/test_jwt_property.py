"""Properties of JWT verification over generated input.

- Whatever string arrives, verification either returns or raises InvalidCredential
  (never another exception, which would surface as a gRPC error instead of a 401).
- Changing any single character of a valid token makes it invalid.
- Headers outside the allowlist, or carrying ``crit``, never verify, whatever else
  they hold; harmless extra header members do not matter.
- Time claims are accepted exactly when a simple model says so.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.identity.b64 import ALPHABET
from sidecar.identity.errors import InvalidCredential
from sidecar.identity.jwk import parse_jwks
from sidecar.identity.jwt import JwtVerifier, StaticKeys
from tests.identity_tokens import (
    FakeClock,
    claims,
    forge,
    jwks_document,
    jwt_rules,
    mint,
    public_jwk,
    rsa_key,
    segment,
    sign_with,
)

NOW = 1_800_000_000.0
KEYS = StaticKeys(parse_jwks(jwks_document(public_jwk(rsa_key(), "k1"))))
VALID = mint(rsa_key(), claims(now=NOW, lifetime_s=3600), kid="k1")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def fresh_verifier() -> JwtVerifier:
    return JwtVerifier(jwt_rules(), KEYS, clock=FakeClock(NOW))


def outcome(token: str) -> str:
    try:
        return fresh_verifier().verify(token).subject
    except InvalidCredential as exc:
        return f"invalid:{exc.code}"


@settings(max_examples=400)
@given(st.text(max_size=300))
def test_arbitrary_text_is_only_ever_invalid(token: str) -> None:
    assert outcome(token).startswith("invalid:")


@settings(max_examples=300)
@given(
    st.lists(st.text(alphabet=ALPHABET + "=+/.", max_size=120), min_size=1, max_size=5).map(
        ".".join
    )
)
def test_token_shaped_noise_is_only_ever_invalid(token: str) -> None:
    assert outcome(token).startswith("invalid:")


@settings(max_examples=300)
@given(json_values, json_values)
def test_arbitrary_json_header_and_payload_are_only_ever_invalid(header: Any, body: Any) -> None:
    # Unsigned structure with a plausible signature: exercises every header/claims
    # branch without a valid signature.
    assert outcome(forge(header, body, b"\x01" * 256)).startswith("invalid:")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_single_character_change_invalidates(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(VALID) - 1))
    replacement = data.draw(st.sampled_from(ALPHABET + ".=+/ " + string.punctuation))
    assume(replacement != VALID[position])
    mutated = VALID[:position] + replacement + VALID[position + 1 :]
    assert outcome(mutated).startswith("invalid:")


@settings(max_examples=60, deadline=None)
@given(
    alg=st.sampled_from(["none", "NONE", "nOnE", "HS256", "hs256", "RS384", "PS256", "rs256", ""]),
    extra=st.dictionaries(
        st.sampled_from(["typ", "cty", "x-custom", "jku", "x5u"]), st.text(max_size=10)
    ),
)
def test_disallowed_algorithms_never_verify(alg: str, extra: dict[str, str]) -> None:
    header = {**extra, "alg": alg, "kid": "k1"}
    signed = sign_with(rsa_key(), header, claims(now=NOW))
    assert outcome(signed) == "invalid:algorithm"


@settings(max_examples=40, deadline=None)
@given(
    extra=st.dictionaries(
        st.sampled_from(["typ", "cty", "x-custom", "jku", "x5u", "x5t"]), st.text(max_size=10)
    ),
    crit=st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=3)),
)
def test_extra_header_members_do_not_matter_but_crit_always_does(
    extra: dict[str, str], crit: list[str] | None
) -> None:
    header: dict[str, Any] = {**extra, "alg": "RS256", "kid": "k1"}
    if crit is not None:
        header["crit"] = crit
    signed = sign_with(rsa_key(), header, claims(now=NOW))
    expected = "alice" if crit is None else "invalid:unsupported_header"
    assert outcome(signed) == expected


@settings(max_examples=80, deadline=None)
@given(
    exp=st.integers(-7200, 7200),
    nbf=st.one_of(st.none(), st.integers(-7200, 7200)),
    leeway=st.integers(0, 120),
)
def test_time_claims_follow_the_model(exp: int, nbf: int | None, leeway: int) -> None:
    body = claims(now=NOW, exp=int(NOW) + exp, iat=None)
    if nbf is not None:
        body["nbf"] = int(NOW) + nbf
    token = f"{segment({'alg': 'RS256', 'kid': 'k1'})}.{segment(body)}"
    signed = sign_with(rsa_key(), {"alg": "RS256", "kid": "k1"}, body)
    assert signed.startswith(token)
    verifier = JwtVerifier(jwt_rules(leeway_s=leeway), KEYS, clock=FakeClock(NOW))
    accepted = exp + leeway > 0 and (nbf is None or nbf <= leeway)
    try:
        verifier.verify(signed)
    except InvalidCredential:
        assert not accepted
    else:
        assert accepted
