"""Trusted keys from JWK documents: what is accepted, and what is refused and why."""

from __future__ import annotations

import pytest

from sidecar.identity.b64 import b64url_decode, b64url_encode
from sidecar.identity.jwk import JwkError, KeySet, parse_fetched_jwks, parse_jwk, parse_jwks
from tests.identity_tokens import ec_key, ed25519_key, jwks_document, public_jwk, rsa_key


def test_key_types_and_their_algorithms() -> None:
    assert parse_jwk(public_jwk(rsa_key(), "r")).algorithms == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
    }  # fmt: skip
    assert parse_jwk(public_jwk(ec_key(), "e")).algorithms == {"ES256"}
    assert parse_jwk(public_jwk(ec_key(0, "P-384"), "e")).algorithms == {"ES384"}
    assert parse_jwk(public_jwk(ec_key(0, "P-521"), "e")).algorithms == {"ES512"}
    assert parse_jwk(public_jwk(ed25519_key(), "o")).algorithms == {"EdDSA"}
    assert parse_jwk(public_jwk(rsa_key(), "r", alg="PS256")).algorithms == {"PS256"}


@pytest.mark.parametrize(
    ("change", "member"),
    [
        ({"kty": "oct", "k": "c2VjcmV0"}, "kty"),
        ({"kty": None}, "kty"),
        ({"kty": "XYZ"}, "kty"),
        ({"d": "AQAB"}, "d"),
        ({"use": "enc"}, "use"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"alg": "ES256"}, "alg"),
        ({"alg": "HS256"}, "alg"),
        ({"alg": "RSA-OAEP"}, "alg"),
        ({"n": "not base64!"}, "n"),
        ({"n": None}, "n"),
        ({"kid": 7}, "kid"),
    ],
)
def test_rsa_jwk_refusals_name_the_member(change: dict[str, object], member: str) -> None:
    jwk = {**public_jwk(rsa_key(), "r"), **change}
    jwk = {name: value for name, value in jwk.items() if value is not None}
    with pytest.raises(JwkError) as caught:
        parse_jwk(jwk)
    assert caught.value.member == member


def test_small_rsa_keys_are_refused() -> None:
    with pytest.raises(JwkError, match="1024 bits"):
        parse_jwk(public_jwk(rsa_key(0, 1024), "small"))


def test_ec_point_must_be_on_the_curve() -> None:
    jwk = public_jwk(ec_key(), "e")
    y = bytearray(b64url_decode(jwk["y"]))
    y[-1] ^= 1
    with pytest.raises(JwkError, match="not on curve"):
        parse_jwk({**jwk, "y": b64url_encode(bytes(y))})


def test_ec_curve_and_coordinate_size() -> None:
    jwk = public_jwk(ec_key(), "e")
    with pytest.raises(JwkError) as caught:
        parse_jwk({**jwk, "crv": "secp256k1"})
    assert caught.value.member == "crv"
    with pytest.raises(JwkError):
        parse_jwk({**jwk, "x": jwk["x"][:-4]})


def test_okp_must_be_a_signature_curve() -> None:
    with pytest.raises(JwkError) as caught:
        parse_jwk({**public_jwk(ed25519_key(), "o"), "crv": "X25519"})
    assert caught.value.member == "crv"


def test_inline_set_errors_carry_the_path() -> None:
    good = public_jwk(rsa_key(), "a")
    with pytest.raises(JwkError) as caught:
        parse_jwks(jwks_document(good, {"kty": "oct", "k": "AA"}), where="spec.identity.jwt.jwks")
    assert caught.value.member == "spec.identity.jwt.jwks.keys[1].kty"
    assert "HMAC" in str(caught.value)
    with pytest.raises(JwkError, match="duplicate kid"):
        parse_jwks(jwks_document(good, public_jwk(ec_key(), "a")))
    with pytest.raises(JwkError, match="keys"):
        parse_jwks({"keys": "nope"})
    with pytest.raises(JwkError):
        parse_jwks([good])


def test_fetched_set_skips_bad_keys_and_reuses_unchanged_ones() -> None:
    rsa = public_jwk(rsa_key(), "a")
    first, problems = parse_fetched_jwks(jwks_document(rsa, {"kty": "oct", "k": "AA"}), KeySet())
    assert len(first) == 1
    assert len(problems) == 1
    assert "keys[1]" in problems[0]
    # A provider publishing private members by mistake: only the public part is used.
    second, _ = parse_fetched_jwks(
        jwks_document({**rsa, "x5c": ["ignored"]}, public_jwk(ec_key(), "b")), first
    )
    assert second.by_kid["a"][0] is first.by_kid["a"][0]
    third, _ = parse_fetched_jwks(jwks_document(public_jwk(rsa_key(1), "a")), second)
    assert third.by_kid["a"][0] is not first.by_kid["a"][0]


def test_candidates_by_kid_and_algorithm() -> None:
    keys = parse_jwks(
        jwks_document(
            public_jwk(rsa_key(), "r"), public_jwk(ec_key(), "e"), public_jwk(ec_key(1), None)
        )
    )
    assert [k.kid for k in keys.candidates("r", "RS256")] == ["r"]
    assert keys.candidates("r", "ES256") == ()
    assert keys.candidates("../../etc/passwd", "RS256") == ()
    assert [k.kid for k in keys.candidates(None, "ES256")] == ["e", None]


@pytest.mark.parametrize("text", ["", "QQ", "QUI", "QUJD", "_-8", "AAAA_w"])
def test_b64url_roundtrip(text: str) -> None:
    assert b64url_encode(b64url_decode(text)) == text


@pytest.mark.parametrize("text", ["Q", "QR", "QUJ", "QQ==", "a+b/", "a b", "Q\n", "é"])
def test_b64url_refuses_non_canonical(text: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(text)
