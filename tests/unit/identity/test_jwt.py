"""JWT verification: the hostile-token catalogue, valid tokens, claims and the cache."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.identity import errors
from sidecar.identity.jwk import KeySet, VerificationKey, parse_jwk, parse_jwks
from sidecar.identity.jwt import (
    MAX_TOKEN_BYTES,
    JwtRules,
    JwtVerifier,
    StaticKeys,
    VerifiedToken,
)
from tests.identity_tokens import (
    AUDIENCE,
    ISSUER,
    FakeClock,
    claims,
    ec_key,
    ed25519_key,
    forge,
    hostile_tokens,
    jwks_document,
    jwks_server,
    jwt_rules,
    mint,
    public_jwk,
    rsa_key,
    sign_with,
)


def verifier(
    clock: FakeClock, *jwks: dict[str, Any], cache_size: int = 100, **rule_overrides: Any
) -> JwtVerifier:
    keys = jwks or (public_jwk(rsa_key(), "rsa-1"), public_jwk(ec_key(), "ec-1"))
    source = StaticKeys(parse_jwks(jwks_document(*keys)))
    return JwtVerifier(jwt_rules(**rule_overrides), source, clock=clock, cache_size=cache_size)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the catalogue --------------------------------------------------------------------

ATTACKER_URL = "http://127.0.0.1:9"  # overridden by a real recording server below
CATALOGUE = sorted(hostile_tokens(rsa_key(), "rsa-1", attacker_url=ATTACKER_URL))


@pytest.mark.parametrize("name", CATALOGUE)
def test_every_hostile_token_is_invalid(name: str, clock: FakeClock) -> None:
    token = hostile_tokens(rsa_key(), "rsa-1", attacker_url=ATTACKER_URL, now=clock.now())[name]
    with pytest.raises(errors.InvalidCredential) as caught:
        verifier(clock).verify(token)
    # Nothing the caller sent is echoed in the error.
    assert token[:40] not in str(caught.value) or not token


def test_catalogue_failures_are_the_expected_kind(clock: FakeClock) -> None:
    tokens = hostile_tokens(rsa_key(), "rsa-1", attacker_url=ATTACKER_URL, now=clock.now())
    expected: dict[str, type[errors.InvalidCredential]] = {
        "expired": errors.ExpiredToken,
        "nbf_in_future": errors.ImmatureToken,
        "wrong_issuer": errors.WrongIssuer,
        "issuer_prefix": errors.WrongIssuer,
        "wrong_audience": errors.WrongAudience,
        "no_exp": errors.MissingClaim,
        "signature_altered": errors.BadSignature,
        "signature_stripped": errors.MalformedToken,
        "signed_by_attacker": errors.BadSignature,
        "hs256_with_public_pem": errors.DisallowedAlgorithm,
        "hs256_with_public_jwk": errors.DisallowedAlgorithm,
        "kid_path_traversal": errors.DisallowedAlgorithm,
        "kid_path_traversal_rs256": errors.UnknownSigningKey,
        "kid_sql_injection_rs256": errors.UnknownSigningKey,
        "jku_elsewhere": errors.UnknownSigningKey,
        "x5u_elsewhere": errors.UnknownSigningKey,
        "jku_same_kid": errors.BadSignature,
        "embedded_jwk": errors.BadSignature,
        "unknown_kid": errors.UnknownSigningKey,
        "one_megabyte": errors.TokenTooLarge,
        "garbage": errors.MalformedToken,
        "non_base64": errors.MalformedToken,
        "header_not_object": errors.MalformedToken,
        "header_is_string": errors.MalformedToken,
        "payload_not_object": errors.MalformedToken,
        "duplicate_alg": errors.MalformedToken,
        "crit_unknown": errors.UnsupportedHeader,
        "b64_false": errors.UnsupportedHeader,
        "jwe_shaped": errors.MalformedToken,
        "alg_none_with_signature": errors.DisallowedAlgorithm,
        "alg_nOnE_with_signature": errors.DisallowedAlgorithm,
    }
    v = verifier(clock)
    for name, kind in expected.items():
        with pytest.raises(kind):
            v.verify(tokens[name])


def test_missing_claim_error_names_the_claim_not_the_value(clock: FakeClock) -> None:
    token = mint(rsa_key(), claims(now=clock.now(), exp=None), kid="rsa-1")
    with pytest.raises(errors.MissingClaim) as caught:
        verifier(clock).verify(token)
    assert caught.value.claim == "exp"


def test_hostile_headers_are_never_fetched(clock: FakeClock) -> None:
    """jku/x5u point at a real server; verification must not contact it."""
    with jwks_server(jwks_document(public_jwk(rsa_key(99), "attacker"))) as attacker:
        tokens = hostile_tokens(rsa_key(), "rsa-1", attacker_url=attacker.base_url, now=clock.now())
        v = verifier(clock)
        for name in ("jku_elsewhere", "x5u_elsewhere", "jku_same_kid", "embedded_jwk"):
            with pytest.raises(errors.InvalidCredential):
                v.verify(tokens[name])
        assert attacker.total_hits() == 0


# -- valid tokens -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("RS256", rsa_key),
        ("RS384", rsa_key),
        ("RS512", rsa_key),
        ("PS256", rsa_key),
        ("PS512", rsa_key),
        ("ES256", ec_key),
        ("ES384", functools.partial(ec_key, 0, "P-384")),
        ("ES512", functools.partial(ec_key, 0, "P-521")),
        ("EdDSA", ed25519_key),
    ],
)
def test_valid_tokens_of_every_algorithm(
    alg: str, make_key: Callable[[], object], clock: FakeClock
) -> None:
    key = make_key()
    v = verifier(clock, public_jwk(key, "k"), algorithms=frozenset({alg}))  # type: ignore[arg-type]
    token = mint(key, claims(now=clock.now(), plan="gold", jti="t-1"), alg=alg, kid="k")  # type: ignore[arg-type]
    verified = v.verify(token)
    assert (verified.subject, verified.plan, verified.jti) == ("alice", "gold", "t-1")


def test_valid_rs256_and_es256_with_the_default_rules(clock: FakeClock) -> None:
    v = verifier(clock)
    rs = mint(rsa_key(), claims(now=clock.now(), subject="rs"), kid="rsa-1")
    es = mint(ec_key(), claims(now=clock.now(), subject="es"), alg="ES256", kid="ec-1")
    assert v.verify(rs).subject == "rs"
    assert v.verify(es).subject == "es"


def test_algorithm_must_be_allowed_by_policy_and_bound_to_key(clock: FakeClock) -> None:
    # PS256 is a fine algorithm for an RSA key, but the policy allows only RS256/ES256.
    token = mint(rsa_key(), claims(now=clock.now()), alg="PS256", kid="rsa-1")
    with pytest.raises(errors.DisallowedAlgorithm):
        verifier(clock).verify(token)
    # A key whose JWK says RS256 never verifies PS256, even when the policy allows it.
    bound = public_jwk(rsa_key(), "rsa-1", alg="RS256")
    v = verifier(clock, bound, algorithms=frozenset({"RS256", "PS256"}))
    with pytest.raises(errors.DisallowedAlgorithm):
        v.verify(token)


def test_es256_token_naming_an_rsa_kid_is_refused(clock: FakeClock) -> None:
    token = mint(ec_key(), claims(now=clock.now()), alg="ES256", kid="rsa-1")
    with pytest.raises(errors.DisallowedAlgorithm):
        verifier(clock).verify(token)


def test_token_without_kid_is_tried_against_keys_of_its_algorithm(clock: FakeClock) -> None:
    token = mint(ec_key(), claims(now=clock.now()), alg="ES256", kid=None)
    assert verifier(clock).verify(token).subject == "alice"


def test_psychic_signature_is_refused(clock: FakeClock) -> None:
    token = mint(ec_key(), claims(now=clock.now()), alg="ES256", kid="ec-1")
    head = token.rpartition(".")[0]
    zero = forge({}, {}, b"\x00" * 64).rpartition(".")[2]
    with pytest.raises(errors.BadSignature):
        verifier(clock).verify(f"{head}.{zero}")


def test_non_canonical_base64_spelling_is_a_different_invalid_token(clock: FakeClock) -> None:
    token = mint(rsa_key(), claims(now=clock.now()), kid="rsa-1")
    head, _, signature = token.rpartition(".")
    # 256 signature bytes leave 4 unused bits in the last character; setting one
    # decodes to the same bytes in a lax decoder, but is refused here.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) + 1]
    with pytest.raises(errors.MalformedToken):
        verifier(clock).verify(f"{head}.{signature[:-1]}{last}")


def test_token_at_the_cap_is_parsed(clock: FakeClock) -> None:
    base = claims(now=clock.now())
    empty = mint(rsa_key(), {**base, "pad": ""}, kid="rsa-1")
    # Every 3 padding characters add 4 base64 characters.
    room = (MAX_TOKEN_BYTES - len(empty)) // 4 * 3
    token = mint(rsa_key(), {**base, "pad": "x" * room}, kid="rsa-1")
    assert MAX_TOKEN_BYTES - 4 < len(token) <= MAX_TOKEN_BYTES
    assert verifier(clock).verify(token).subject == "alice"
    # One character more and it is refused before any parsing.
    longer = token[:-1] + "A" * (MAX_TOKEN_BYTES - len(token) + 2)
    with pytest.raises(errors.TokenTooLarge):
        verifier(clock).verify(longer)


# -- claims --------------------------------------------------------------------------


def _verify(clock: FakeClock, body: dict[str, Any], **rule_overrides: Any) -> VerifiedToken:
    return verifier(clock, **rule_overrides).verify(mint(rsa_key(), body, kid="rsa-1"))


def test_leeway_applies_to_exp_and_nbf(clock: FakeClock) -> None:
    now = clock.now()
    _verify(clock, claims(now=now, exp=int(now) - 29))
    with pytest.raises(errors.ExpiredToken):
        _verify(clock, claims(now=now, exp=int(now) - 31))
    _verify(clock, claims(now=now, nbf=int(now) + 29))
    with pytest.raises(errors.ImmatureToken):
        _verify(clock, claims(now=now, nbf=int(now) + 31))
    with pytest.raises(errors.ImmatureToken):
        _verify(clock, claims(now=now, iat=int(now) + 3600))


@pytest.mark.parametrize("value", ["soon", True, None, [1], {"at": 1}])
def test_exp_must_be_a_finite_number(clock: FakeClock, value: object) -> None:
    body = {**claims(now=clock.now()), "exp": value}
    with pytest.raises(errors.ClaimError):
        verifier(clock).verify(sign_with(rsa_key(), {"alg": "RS256", "kid": "rsa-1"}, body))


def test_nan_spelled_in_json_is_malformed(clock: FakeClock) -> None:
    raw = json.dumps(claims(now=clock.now())).replace('"exp": ', '"exp": NaN, "x": ', 1)
    token = sign_with(rsa_key(), {"alg": "RS256", "kid": "rsa-1"}, raw)
    with pytest.raises(errors.MalformedToken):
        verifier(clock).verify(token)


def test_audience_forms(clock: FakeClock) -> None:
    now = clock.now()
    _verify(clock, claims(now=now, audience=["other", AUDIENCE]))
    with pytest.raises(errors.WrongAudience):
        _verify(clock, claims(now=now, audience=["other", "more"]))
    with pytest.raises(errors.MissingClaim):
        _verify(clock, claims(now=now, audience=None))
    with pytest.raises(errors.InvalidClaim):
        _verify(clock, claims(now=now, audience=[AUDIENCE, 7]))  # type: ignore[list-item]
    # Without configured audiences the claim is not checked (like Envoy jwt_authn).
    _verify(clock, claims(now=now, audience="anything"), audiences=frozenset())


def test_issuer_must_match_exactly(clock: FakeClock) -> None:
    now = clock.now()
    for wrong in (ISSUER + "/", ISSUER.upper(), ISSUER[:-1], "idp.test"):
        with pytest.raises(errors.WrongIssuer):
            _verify(clock, claims(now=now, issuer=wrong))
    header = {"alg": "RS256", "kid": "rsa-1"}
    with pytest.raises(errors.WrongIssuer):
        verifier(clock).verify(sign_with(rsa_key(), header, {**claims(now=now), "iss": [ISSUER]}))
    with pytest.raises(errors.MissingClaim):
        _verify(clock, claims(now=now, iss=None))


def test_subject_and_plan_claims(clock: FakeClock) -> None:
    now = clock.now()
    token = mint(rsa_key(), claims(now=now, user_id=42, tier="gold"), kid="rsa-1")
    v = verifier(clock, subject_claim="user_id", plan_claim="tier")
    verified = v.verify(token)
    assert (verified.subject, verified.plan) == ("42", "gold")
    with pytest.raises(errors.MissingClaim):
        _verify(clock, claims(now=now, sub=None))
    for bad in ("", "a\r\nx-abuse-subject: admin", "x" * 257, True, {"id": 1}):
        with pytest.raises(errors.InvalidClaim):
            _verify(clock, claims(now=now, sub=bad))
    # An unusable plan is no plan, not a refusal.
    assert _verify(clock, claims(now=now, plan=["gold"])).plan is None
    assert _verify(clock, claims(now=now, plan="a\nb")).plan is None


def test_jti_must_be_a_usable_identifier(clock: FakeClock) -> None:
    now = clock.now()
    assert _verify(clock, claims(now=now, jti="abc")).jti == "abc"
    for bad in (5, "", "x" * 300, "a\x00b"):
        with pytest.raises(errors.InvalidClaim):
            _verify(clock, claims(now=now, jti=bad))


def test_rules_refuse_symmetric_algorithms_in_configuration() -> None:
    from sidecar.model.policy import JwtSpec

    spec = JwtSpec.model_construct(
        issuer=ISSUER,
        audiences=[],
        jwks_uri="https://idp.test/jwks",
        jwks=None,
        algorithms=["RS256", "HS256"],  # type: ignore[list-item]
        leeway="30s",
        subject_claim="sub",
        plan_claim="plan",
        revocation=False,
    )
    with pytest.raises(ValueError, match="HS256"):
        JwtRules.from_spec(spec)


def test_allowlist_cannot_admit_none_or_hmac(clock: FakeClock) -> None:
    """Even a verifier built with a broken allowlist refuses none and HS*."""
    body = claims(now=clock.now())
    v = verifier(clock, algorithms=frozenset({"none", "HS256", "RS256"}))
    with pytest.raises(errors.DisallowedAlgorithm):
        v.verify(forge({"alg": "none", "kid": "rsa-1"}, body, b"x"))
    with pytest.raises(errors.DisallowedAlgorithm):
        v.verify(forge({"alg": "HS256", "kid": "rsa-1"}, body, b"x" * 32))


# -- the verified-token cache -----------------------------------------------------------


def _counting(key: VerificationKey, calls: list[str]) -> VerificationKey:
    inner = key._verify

    def counted(alg: str, data: bytes, signature: bytes) -> None:
        calls.append(alg)
        inner(alg, data, signature)

    return dataclasses.replace(key, _verify=counted)


def test_repeated_token_is_verified_once(clock: FakeClock) -> None:
    calls: list[str] = []
    key = _counting(parse_jwk(public_jwk(rsa_key(), "rsa-1")), calls)
    v = JwtVerifier(jwt_rules(), StaticKeys(KeySet.of([key])), clock=clock)
    token = mint(rsa_key(), claims(now=clock.now()), kid="rsa-1")
    for _ in range(50):
        assert v.verify(token).subject == "alice"
    assert calls == ["RS256"]


def test_cached_token_expires_with_its_exp(clock: FakeClock) -> None:
    v = verifier(clock)
    token = mint(rsa_key(), claims(now=clock.now(), lifetime_s=60), kid="rsa-1")
    v.verify(token)
    clock.advance(60 + 29)
    v.verify(token)  # within leeway
    clock.advance(2)
    with pytest.raises(errors.ExpiredToken):
        v.verify(token)


class _MutableKeys:
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.misses = 0

    def note_unknown_kid(self) -> None:
        self.misses += 1


def test_cached_token_dies_with_its_key(clock: FakeClock) -> None:
    key = parse_jwk(public_jwk(rsa_key(), "rsa-1"))
    source = _MutableKeys(KeySet.of([key]))
    v = JwtVerifier(jwt_rules(), source, clock=clock)
    token = mint(rsa_key(), claims(now=clock.now()), kid="rsa-1")
    v.verify(token)
    # A refreshed set that keeps the same key object keeps the entry.
    source.keys = KeySet.of([key, parse_jwk(public_jwk(ec_key(), "ec-1"))])
    v.verify(token)
    # The provider dropped the key: the cached verdict no longer stands.
    source.keys = KeySet.of([parse_jwk(public_jwk(ec_key(), "ec-1"))])
    with pytest.raises(errors.UnknownSigningKey):
        v.verify(token)
    assert source.misses == 1


def test_cache_is_bounded_lru(clock: FakeClock) -> None:
    v = verifier(clock, cache_size=3)
    tokens = [
        mint(rsa_key(), claims(now=clock.now(), subject=f"u{i}"), kid="rsa-1") for i in range(5)
    ]
    for token in tokens:
        v.verify(token)
    assert v.cached_tokens() == 3


def test_failures_are_not_cached(clock: FakeClock) -> None:
    v = verifier(clock)
    body = claims(now=clock.now(), lifetime_s=3600, nbf=int(clock.now()) + 600)
    token = mint(rsa_key(), body, kid="rsa-1")
    with pytest.raises(errors.ImmatureToken):
        v.verify(token)
    assert v.cached_tokens() == 0
    clock.advance(600)
    assert v.verify(token).subject == "alice"


def test_unknown_kid_asks_the_source_for_a_refresh_unless_told_not_to(clock: FakeClock) -> None:
    source = _MutableKeys(KeySet.of([parse_jwk(public_jwk(rsa_key(), "rsa-1"))]))
    v = JwtVerifier(jwt_rules(), source, clock=clock)
    token = mint(rsa_key(), claims(now=clock.now()), kid="new")
    with pytest.raises(errors.UnknownSigningKey):
        v.verify(token, refresh_on_unknown_kid=False)
    assert source.misses == 0
    with pytest.raises(errors.UnknownSigningKey):
        v.verify(token)
    assert source.misses == 1


def test_reprs_hold_no_token(clock: FakeClock) -> None:
    v = verifier(clock)
    token = mint(rsa_key(), claims(now=clock.now()), kid="rsa-1")
    verified = v.verify(token)
    for text in (repr(v), repr(verified)):
        assert token not in text
        assert token.split(".")[2][:20] not in text
