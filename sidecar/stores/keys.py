"""The one key schema of the shared store.

Every key of a policy carries the policy in a Redis Cluster hash tag
(``{ns/name}``), so every key one Check touches on that policy lives in one slot
and a single script can run over them atomically. Revocations are global (the
``revoke`` command knows no policy) and live under their own tag.
"""

from __future__ import annotations

PREFIX = "as"


def policy_tag(policy: str) -> str:
    return "{" + policy + "}"


def block_key(policy: str, kind: str, value: str) -> str:
    """An active block (honeypot hit) of ``kind`` ``ip`` or ``subject``."""
    return f"{PREFIX}:{policy_tag(policy)}:blk:{kind}:{value}"


def member_key(policy: str, cohort: str, key: str) -> str:
    return f"{PREFIX}:{policy_tag(policy)}:mem:{cohort}:{key}"


def cohort_counter_key(policy: str, cohort: str, key: str) -> str:
    return f"{PREFIX}:{policy_tag(policy)}:cnt:{cohort}:{key}"


def limit_key(policy: str, rule: str, dimensions: str) -> str:
    return f"{PREFIX}:{policy_tag(policy)}:rl:{rule}:{dimensions}"


def revocation_key(jti: str) -> str:
    return f"{PREFIX}:{{rv}}:{jti}"
