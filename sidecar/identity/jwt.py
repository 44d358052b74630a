"""JWT verification: compact JWS only, keys from the policy only, claims checked strictly.

The token is parsed here rather than by a JOSE library so that no library guard
is relied on (SECURITY-ANCHORS §1): the algorithm comes from an exact-case
allowlist and must also be one the trusted key is bound to; ``none`` and HMAC
are refused whatever the allowlist says; ``kid`` is only a dictionary key;
``jku``/``x5u``/``jwk``/``x5c`` are never read; any ``crit`` is refused (RFC 7515
§4.1.11: we understand no extension). Every failure is an ``InvalidCredential``.

A token that verified is remembered (keyed by its SHA-256, never the token) until
its ``exp`` plus leeway, as long as the key that verified it is still trusted, so
a client repeating its token costs one hash and one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.identity.b64 import decode_segment
from sidecar.identity.errors import (
    BadSignature,
    DisallowedAlgorithm,
    ExpiredToken,
    ImmatureToken,
    InvalidClaim,
    MalformedToken,
    MissingClaim,
    TokenTooLarge,
    UnknownSigningKey,
    UnsupportedHeader,
    WrongAudience,
    WrongIssuer,
)
from sidecar.identity.jwk import ASYMMETRIC_ALGORITHMS, KeySet, VerificationKey
from sidecar.model.durations import parse_duration
from sidecar.model.policy import JwtSpec

MAX_TOKEN_BYTES: Final = 16 * 1024  # contract §4: longer is invalid without parsing
MAX_IDENTIFIER_CHARS: Final = 256  # subject, plan, jti: they travel in headers and store keys
DEFAULT_CACHE_SIZE: Final = 10_000

# Legal compact JWS: three non-empty base64url segments (rfc8725bis: only letters,
# digits, '-', '_' and '.'); an empty signature ("header.payload.") is malformed.
_COMPACT: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
# Header parameters that change how a token must be processed. Ignoring them would
# make us read a different message than a conformant recipient (RFC 7797 b64) or
# treat a JWE as a JWS; refusing is the only safe answer.
_REFUSED_HEADER_PARAMS: Final = ("crit", "b64", "enc", "zip")


@dataclass(frozen=True, slots=True)
class JwtRules:
    """The checks one policy applies, prepared once from its ``identity.jwt``."""

    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    leeway_s: int
    subject_claim: str
    plan_claim: str

    @classmethod
    def from_spec(cls, spec: JwtSpec) -> JwtRules:
        refused = [alg for alg in spec.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"jwt.algorithms: {', '.join(refused)} cannot be used with JWKS keys; "
                f"use asymmetric algorithms ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        return cls(
            issuer=spec.issuer,
            audiences=frozenset(spec.audiences),
            algorithms=frozenset(spec.algorithms),
            leeway_s=parse_duration(spec.leeway),
            subject_claim=spec.subject_claim,
            plan_claim=spec.plan_claim,
        )


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a valid token established. Holds no part of the token itself."""

    subject: str
    plan: str | None
    jti: str | None
    valid_until: float  # wall-clock seconds: exp + leeway
    key: VerificationKey


class KeySource(Protocol):
    """Where a verifier gets its trusted keys: an inline JWKS or a ``JwksCache``."""

    @property
    def keys(self) -> KeySet: ...

    def note_unknown_kid(self) -> None:
        """A token named a ``kid`` we do not have; the source may refresh (rate-limited)."""


class StaticKeys:
    """An inline JWKS from the policy: fixed for the life of the compiled policy."""

    __slots__ = ("_keys",)

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys

    @property
    def keys(self) -> KeySet:
        return self._keys

    def note_unknown_kid(self) -> None:
        return None


class JwtVerifier:
    """Verifies bearer tokens for one policy; owns that policy's verified-token cache."""

    __slots__ = ("_cache", "_cache_size", "_clock", "rules", "source")

    def __init__(
        self,
        rules: JwtRules,
        source: KeySource,
        *,
        clock: Clock = SYSTEM_CLOCK,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.rules = rules
        self.source = source
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, VerifiedToken] = OrderedDict()

    def __repr__(self) -> str:
        return f"JwtVerifier(issuer={self.rules.issuer!r}, cached={len(self._cache)})"

    def verify(self, token: str, *, refresh_on_unknown_kid: bool = True) -> VerifiedToken:
        """Return what the token establishes, or raise an ``InvalidCredential``."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenTooLarge
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if self._clock.now() < cached.valid_until and cached.key in self.source.keys.members:
                # KeyError: evicted meanwhile by another thread; harmless.
                with contextlib.suppress(KeyError):
                    self._cache.move_to_end(digest)
                return cached
            self._cache.pop(digest, None)
        verified = self._verify_uncached(token, refresh_on_unknown_kid)
        self._remember(digest, verified)
        return verified

    def cached_tokens(self) -> int:
        return len(self._cache)

    def _remember(self, digest: bytes, verified: VerifiedToken) -> None:
        cache = self._cache
        cache[digest] = verified
        while len(cache) > self._cache_size:
            try:
                cache.popitem(last=False)
            except KeyError:  # emptied by another thread
                break

    def _verify_uncached(self, token: str, refresh_on_unknown_kid: bool) -> VerifiedToken:
        match = _COMPACT.fullmatch(token)
        if match is None:
            raise MalformedToken
        header_b64, payload_b64, signature_b64 = match.groups()
        header = _json_object(header_b64)
        alg = _algorithm(header, self.rules.algorithms)
        for param in _REFUSED_HEADER_PARAMS:
            if param in header:
                raise UnsupportedHeader
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken

        keys = self.source.keys
        candidates = keys.candidates(kid, alg)
        if not candidates:
            if kid is not None and kid in keys.by_kid:
                raise DisallowedAlgorithm  # the key exists but is bound to another algorithm
            if kid is not None and refresh_on_unknown_kid:
                self.source.note_unknown_kid()
            raise UnknownSigningKey

        try:
            signature = decode_segment(signature_b64)
        except ValueError:
            raise MalformedToken from None
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        key = _first_verifying(candidates, alg, signing_input, signature)
        if key is None:
            raise BadSignature
        claims = _json_object(payload_b64)
        return self._check_claims(claims, key)

    def _check_claims(self, claims: dict[str, Any], key: VerificationKey) -> VerifiedToken:
        rules = self.rules
        now = self._clock.now()
        leeway = rules.leeway_s

        exp = _numeric_claim(claims, "exp", required=True)
        assert exp is not None
        if now >= exp + leeway:
            raise ExpiredToken
        nbf = _numeric_claim(claims, "nbf", required=False)
        if nbf is not None and now + leeway < nbf:
            raise ImmatureToken
        iat = _numeric_claim(claims, "iat", required=False)
        if iat is not None and now + leeway < iat:
            raise ImmatureToken

        if "iss" not in claims:
            raise MissingClaim("iss")
        # Exact comparison of strings only: no prefix, substring or type coercion.
        issuer = claims["iss"]
        if not isinstance(issuer, str) or issuer != rules.issuer:
            raise WrongIssuer
        if rules.audiences:
            _check_audience(claims, rules.audiences)

        subject = _subject(claims, rules.subject_claim)
        plan = claims.get(rules.plan_claim)
        if not _is_identifier(plan):
            # A plan we cannot use is no plan: the caller gets the policy's defaults.
            plan = None
        jti = claims.get("jti")
        if jti is not None and not _is_identifier(jti):
            raise InvalidClaim("jti")
        return VerifiedToken(subject, plan, jti, exp + leeway, key)


def _first_verifying(
    candidates: Iterable[VerificationKey], alg: str, signing_input: bytes, signature: bytes
) -> VerificationKey | None:
    for key in candidates:
        if key.verifies(alg, signing_input, signature):
            return key
    return None


def _algorithm(header: dict[str, Any], allowed: frozenset[str]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise DisallowedAlgorithm
    # Refused before the allowlist, so no configuration can ever admit them.
    folded = alg.casefold()
    if folded == "none" or folded.startswith("hs"):
        raise DisallowedAlgorithm
    if alg not in allowed:  # exact, case-sensitive
        raise DisallowedAlgorithm
    return alg


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §4 / RFC 7519 §4: member names must be unique; parsers that keep
    # the first or the last one disagree, so a duplicate is refused outright.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_object(segment: str) -> dict[str, Any]:
    try:
        text = decode_segment(segment).decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        raise MalformedToken from None
    if not isinstance(value, dict):
        raise MalformedToken
    return value


def _numeric_claim(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required or name in claims:
            raise MissingClaim(name) if required else InvalidClaim(name)
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidClaim(name)
    return float(value)


def _check_audience(claims: dict[str, Any], audiences: frozenset[str]) -> None:
    if "aud" not in claims:
        raise MissingClaim("aud")
    aud = claims["aud"]
    if isinstance(aud, str):
        if aud in audiences:
            return
    elif isinstance(aud, list):
        if not all(isinstance(item, str) for item in aud):
            raise InvalidClaim("aud")
        if not audiences.isdisjoint(aud):
            return
    else:
        raise InvalidClaim("aud")
    raise WrongAudience


def _subject(claims: dict[str, Any], name: str) -> str:
    if name not in claims:
        raise MissingClaim(name)
    value = claims[name]
    # Numeric user ids are common in custom subject claims; bool is not a number here.
    if type(value) is int:
        value = str(value)
    if not _is_identifier(value):
        raise InvalidClaim(name)
    assert isinstance(value, str)
    return value


def _is_identifier(value: object) -> bool:
    """A non-empty printable string short enough for a header and a store key."""
    return isinstance(value, str) and 0 < len(value) <= MAX_IDENTIFIER_CHARS and value.isprintable()
