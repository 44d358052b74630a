"""mTLS: the client-certificate principal Envoy verified (``source.principal``).

Envoy sets the principal only after it has validated the peer certificate against
its trust bundle, so a non-empty value is a credential in itself; it is either
present or absent, never "presented and invalid".
"""

from __future__ import annotations

from typing import Final

# SPIFFE IDs are at most 2048 bytes; a longer value is not a principal we can key on.
MAX_PRINCIPAL_CHARS: Final = 2048


def principal_subject(principal: str) -> str | None:
    """The subject an Envoy-verified principal establishes, or None when absent."""
    if not principal or len(principal) > MAX_PRINCIPAL_CHARS or not principal.isprintable():
        return None
    return principal
