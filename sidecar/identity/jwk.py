"""Trusted verification keys: JWK documents parsed once into ``cryptography`` objects.

A key is bound to the algorithms it may verify (its ``kty``/``crv``, narrowed by
the JWK's own ``alg``), never to what a token's header claims. Only asymmetric
public keys exist here: there is no HMAC code path at all, so the RS256 → HS256
key-confusion family cannot be reached whatever a token says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sidecar.identity.b64 import b64url_decode

RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
OKP_ALGORITHMS: Final = frozenset({"EdDSA"})
ASYMMETRIC_ALGORITHMS: Final = RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS
MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3 / §3.5

_HASHES: Final[Mapping[str, hashes.HashAlgorithm]] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
# RFC 7518 §3.5: PSS salt length equals the hash output length.
_RSA_SCHEMES: Final[Mapping[str, tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]]] = {
    **{f"RS{n}": (padding.PKCS1v15(), h) for n, h in _HASHES.items()},
    **{
        f"PS{n}": (padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        for n, h in _HASHES.items()
    },
}
_EC_CURVES: Final[Mapping[str, tuple[ec.EllipticCurve, int, str]]] = {
    # crv: (curve, coordinate bytes, the one JWS algorithm for it)
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
    "P-521": (ec.SECP521R1(), 66, "ES512"),
}
_EC_HASH: Final = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Members that decide what a key verifies; two JWKs equal on these are the same key.
_IDENTITY_MEMBERS: Final = ("kty", "kid", "alg", "use", "key_ops", "crv", "n", "e", "x", "y")

Verifier = Callable[[str, bytes, bytes], None]  # (alg, signing input, signature); raises


class JwkError(ValueError):
    """A JWK that cannot be a trusted verification key; names the member at fault."""

    def __init__(self, member: str, message: str) -> None:
        self.member = member
        super().__init__(f"{member}: {message}" if member else message)


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """One trusted public key. Compared by identity: the verified-token cache checks
    that the very key that verified a token is still in the current key set."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    fingerprint: str = field(repr=False)
    _verify: Verifier = field(repr=False)

    def verifies(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        if alg not in self.algorithms:
            return False
        try:
            self._verify(alg, signing_input, signature)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable set of trusted keys, indexed by ``kid``."""

    keys: tuple[VerificationKey, ...] = ()
    by_kid: Mapping[str, tuple[VerificationKey, ...]] = field(default_factory=dict)
    members: frozenset[VerificationKey] = frozenset()
    by_fingerprint: Mapping[str, VerificationKey] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[VerificationKey]) -> KeySet:
        ordered = tuple(keys)
        by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in ordered:
            if key.kid is not None:
                by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        return cls(
            keys=ordered,
            by_kid=by_kid,
            members=frozenset(ordered),
            by_fingerprint={key.fingerprint: key for key in ordered},
        )

    def candidates(self, kid: str | None, alg: str) -> tuple[VerificationKey, ...]:
        """Keys that may verify a token with this ``kid`` (a plain dictionary key,
        never a path or a query) and ``alg``; without ``kid``, every key for ``alg``."""
        pool = self.keys if kid is None else self.by_kid.get(kid, ())
        return tuple(key for key in pool if alg in key.algorithms)

    def __len__(self) -> int:
        return len(self.keys)


EMPTY_KEYS: Final = KeySet()


def parse_jwk(jwk: Mapping[str, Any], *, allow_private: bool = False) -> VerificationKey:
    """Build a verification key from one JWK, or raise JwkError naming the member.

    ``allow_private`` is for key sets fetched from an identity provider: their
    private members are never read. Inline keys in a policy must not carry them
    (a private key in a policy object is a leaked key).
    """
    if not isinstance(jwk, Mapping):
        raise JwkError("", "a JWK must be a JSON object")
    kty = jwk.get("kty")
    if not isinstance(kty, str):
        raise JwkError("kty", "missing; use RSA, EC or OKP")
    if kty == "oct":
        raise JwkError(
            "kty", "'oct' (a shared HMAC secret) is never accepted; publish asymmetric public keys"
        )
    if not allow_private:
        for member in _PRIVATE_MEMBERS:
            if member in jwk:
                raise JwkError(member, "private key material; put only the public key in a policy")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwkError("kid", "must be a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JwkError("use", f"is {use!r}; only signature keys ('sig') verify tokens")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JwkError("key_ops", "does not include 'verify'")

    if kty == "RSA":
        algorithms, verifier = _rsa(jwk)
    elif kty == "EC":
        algorithms, verifier = _ec(jwk)
    elif kty == "OKP":
        algorithms, verifier = _okp(jwk)
    else:
        raise JwkError("kty", f"{kty!r} is not supported; use RSA, EC or OKP")

    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in algorithms:
            allowed = ", ".join(sorted(algorithms))
            raise JwkError("alg", f"{alg!r} is not a signature algorithm for this key ({allowed})")
        algorithms = frozenset({alg})
    return VerificationKey(kid, kty, algorithms, fingerprint(jwk), verifier)


def fingerprint(jwk: Mapping[str, Any]) -> str:
    """Canonical text of the members that decide what a JWK verifies."""
    relevant = {name: jwk[name] for name in _IDENTITY_MEMBERS if name in jwk}
    return json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)


def parse_jwks(document: Any, *, where: str = "jwks") -> KeySet:
    """Parse a JWK Set from a policy, strictly: any unusable key is an error that
    names it (``jwks.keys[1].kty: ...``). Used at policy compile time."""
    keys = _keys_array(document, where)
    parsed: list[VerificationKey] = []
    seen: set[str] = set()
    for index, jwk in enumerate(keys):
        try:
            key = parse_jwk(jwk)
        except JwkError as exc:
            path = f"{where}.keys[{index}]" + (f".{exc.member}" if exc.member else "")
            raise JwkError(path, str(exc).removeprefix(f"{exc.member}: ")) from None
        if key.kid is not None:
            if key.kid in seen:
                raise JwkError(f"{where}.keys[{index}].kid", f"duplicate kid {key.kid!r}")
            seen.add(key.kid)
        parsed.append(key)
    return KeySet.of(parsed)


def parse_fetched_jwks(document: Any, previous: KeySet) -> tuple[KeySet, list[str]]:
    """Parse a JWK Set fetched from an identity provider, leniently: unusable keys
    are skipped (and named in the returned problems). Keys equal to one in
    ``previous`` keep their object, so tokens cached against them stay valid."""
    keys = _keys_array(document, "jwks")
    parsed: list[VerificationKey] = []
    problems: list[str] = []
    for index, jwk in enumerate(keys):
        if isinstance(jwk, Mapping):
            known = previous.by_fingerprint.get(fingerprint(jwk))
            if known is not None:
                parsed.append(known)
                continue
        try:
            parsed.append(parse_jwk(jwk, allow_private=True))
        except JwkError as exc:
            problems.append(f"keys[{index}]: {exc}")
    return KeySet.of(parsed), problems


def _keys_array(document: Any, where: str) -> list[Any]:
    if not isinstance(document, Mapping):
        raise JwkError(where, "a JWK Set must be a JSON object with a 'keys' array")
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise JwkError(f"{where}.keys", "must be an array of JWKs")
    return keys


def _b64_member(jwk: Mapping[str, Any], member: str) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise JwkError(member, "missing or not a string")
    try:
        # Some providers pad base64url; padding carries no information.
        return b64url_decode(value.rstrip("="))
    except ValueError as exc:
        raise JwkError(member, str(exc)) from None


def _rsa(jwk: Mapping[str, Any]) -> tuple[frozenset[str], Verifier]:
    modulus = int.from_bytes(_b64_member(jwk, "n"), "big")
    exponent = int.from_bytes(_b64_member(jwk, "e"), "big")
    if modulus.bit_length() < MIN_RSA_BITS:
        raise JwkError(
            "n", f"RSA key of {modulus.bit_length()} bits; at least {MIN_RSA_BITS} are required"
        )
    try:
        public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError as exc:
        raise JwkError("e", f"not a usable RSA public key ({exc})") from None
    size = (public.key_size + 7) // 8

    def verify(alg: str, data: bytes, signature: bytes) -> None:
        if len(signature) != size:
            raise InvalidSignature
        scheme, digest = _RSA_SCHEMES[alg]
        public.verify(signature, data, scheme, digest)

    return RSA_ALGORITHMS, verify


def _ec(jwk: Mapping[str, Any]) -> tuple[frozenset[str], Verifier]:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _EC_CURVES:
        raise JwkError("crv", f"{crv!r} is not supported; use P-256, P-384 or P-521")
    curve, size, alg = _EC_CURVES[crv]
    x = _b64_member(jwk, "x")
    y = _b64_member(jwk, "y")
    if len(x) != size or len(y) != size:
        raise JwkError("x", f"coordinates of a {crv} key are {size} bytes")
    try:
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except ValueError:
        raise JwkError("x", f"the point is not on curve {crv}") from None

    def verify(alg: str, data: bytes, signature: bytes) -> None:
        # JWS carries R || S, fixed width (RFC 7518 §3.4). Zero values are refused
        # here ("psychic signatures", CVE-2022-21449); OpenSSL checks the range.
        if len(signature) != 2 * size:
            raise InvalidSignature
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        if r == 0 or s == 0:
            raise InvalidSignature
        public.verify(encode_dss_signature(r, s), data, ec.ECDSA(_EC_HASH[alg]))

    return frozenset({alg}), verify


def _okp(jwk: Mapping[str, Any]) -> tuple[frozenset[str], Verifier]:
    crv = jwk.get("crv")
    x = _b64_member(jwk, "x")
    public: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    try:
        if crv == "Ed25519":
            public = ed25519.Ed25519PublicKey.from_public_bytes(x)
        elif crv == "Ed448":
            public = ed448.Ed448PublicKey.from_public_bytes(x)
        else:
            raise JwkError("crv", f"{crv!r} is not a signature curve; use Ed25519 or Ed448")
    except ValueError as exc:
        if isinstance(exc, JwkError):
            raise
        raise JwkError("x", f"not a usable {crv} public key") from None

    def verify(alg: str, data: bytes, signature: bytes) -> None:
        public.verify(signature, data)

    return OKP_ALGORITHMS, verify
