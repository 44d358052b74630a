"""Revoked token ids (``jti``) in the shared store.

The identity step appends one ``RevocationCheck`` per request carrying a token
with a ``jti`` (when the policy has ``revocation: true``); the store answers in
the same round trip as every other check. ``abuse-sidecar revoke`` writes the
entries via ``Store.revoke`` after ``validate_jti``.
"""

from __future__ import annotations

from typing import Final

from sidecar.identity.jwt import MAX_IDENTIFIER_CHARS
from sidecar.stores.base import OpResult, RevocationCheck, RevocationResult
from sidecar.stores.keys import revocation_key

MAX_JTI_CHARS: Final = MAX_IDENTIFIER_CHARS  # the bound the verifier applies to the claim


def revocation_check(jti: str) -> RevocationCheck:
    return RevocationCheck(revocation_key(jti))


def is_revoked(result: OpResult | None) -> bool:
    """True only for a store answer saying the ``jti`` is revoked; an operation the
    store did not run (an earlier one denied) revokes nothing."""
    return isinstance(result, RevocationResult) and result.revoked


def validate_jti(jti: str) -> str:
    """Check a ``jti`` given on the command line; raise ValueError saying what is wrong."""
    if not jti:
        raise ValueError("--jti must not be empty")
    if len(jti) > MAX_JTI_CHARS:
        raise ValueError(f"--jti is {len(jti)} characters; tokens carry at most {MAX_JTI_CHARS}")
    if not jti.isprintable():
        raise ValueError("--jti contains control characters; no token can carry it")
    return jti
