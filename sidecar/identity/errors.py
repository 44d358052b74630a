"""Why a presented credential was refused, as a type tree.

Every class here means ``invalid_credentials`` to the client; the subclass only
feeds the operator's explanation (``code``). Messages are fixed strings: they
never carry the credential, a claim value or anything else the caller sent, so
an exception can be logged or repr'd anywhere without leaking.
"""

from __future__ import annotations

from typing import ClassVar

from sidecar.errors import SidecarError


class InvalidCredential(SidecarError):
    """A credential was presented and is not acceptable."""

    code: ClassVar[str] = "invalid"
    message: ClassVar[str] = "credential is not valid"

    def __init__(self) -> None:
        super().__init__(self.message)


class MalformedToken(InvalidCredential):
    """Not a compact JWS: bad characters, base64url, JSON, or a header that is not an object."""

    code = "malformed"
    message = "token is not a well-formed compact JWS"


class TokenTooLarge(MalformedToken):
    """Longer than the cap; refused before any parsing."""

    code = "too_large"
    message = "token exceeds the size limit"


class UnsupportedHeader(InvalidCredential):
    """A header parameter we must not ignore: ``crit``, ``b64``, JWE ``enc``/``zip``."""

    code = "unsupported_header"
    message = "token header uses an extension this verifier does not support"


class DisallowedAlgorithm(InvalidCredential):
    """``alg`` is missing, ``none``, HMAC, outside the policy allowlist, or not the key's."""

    code = "algorithm"
    message = "token algorithm is not allowed"


class UnknownSigningKey(InvalidCredential):
    """No trusted key matches the token's ``kid`` (or, without ``kid``, its algorithm)."""

    code = "unknown_kid"
    message = "no trusted key matches the token"


class BadSignature(InvalidCredential):
    """The signature does not verify with the trusted key."""

    code = "signature"
    message = "token signature does not verify"


class ExpiredToken(InvalidCredential):
    """``exp`` is in the past (beyond the leeway)."""

    code = "expired"
    message = "token has expired"


class ImmatureToken(InvalidCredential):
    """``nbf`` or ``iat`` is in the future (beyond the leeway)."""

    code = "not_yet_valid"
    message = "token is not valid yet"


class WrongIssuer(InvalidCredential):
    """``iss`` is not exactly the configured issuer."""

    code = "issuer"
    message = "token issuer is not trusted"


class WrongAudience(InvalidCredential):
    """``aud`` names none of the configured audiences."""

    code = "audience"
    message = "token audience is not accepted"


class ClaimError(InvalidCredential):
    """A claim is missing or has an unusable type or value; carries the claim's name."""

    code = "claim"
    message = "token claim is not valid"

    def __init__(self, claim: str) -> None:
        # The name comes from the policy or the registered claim set, never from the token.
        self.claim = claim
        SidecarError.__init__(self, f"{self.message}: {claim}")


class MissingClaim(ClaimError):
    code = "missing_claim"
    message = "token lacks a required claim"


class InvalidClaim(ClaimError):
    code = "invalid_claim"
    message = "token claim has an unusable value"


class UnknownApiKey(InvalidCredential):
    """The presented API key matches no inline key and no Secret of this policy."""

    code = "unknown_api_key"
    message = "API key is not known"


class MalformedApiKey(InvalidCredential):
    """Empty, oversized, or sent more than once."""

    code = "malformed_api_key"
    message = "API key is malformed"
