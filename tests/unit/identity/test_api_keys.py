"""API keys by digest: inline keys, the Secret-fed table, selectors and namespaces."""

from __future__ import annotations

import hashlib
import threading

import pytest

from sidecar.identity import errors
from sidecar.identity.api_keys import (
    MAX_API_KEY_CHARS,
    ApiKeyIndex,
    SecretApiKey,
    SecretKeyTable,
    digest_of,
)
from sidecar.identity.mtls import principal_subject
from sidecar.identity.revocation import is_revoked, revocation_check, validate_jti
from sidecar.model.policy import InlineApiKey
from sidecar.stores.base import LimitResult, RevocationResult
from sidecar.stores.keys import revocation_key

ALICE_KEY = "sk_live_alice_0123456789"
BOB_KEY = "sk_live_bob_9876543210"
LABELS = {"abuse.sidecar.dev/api-key": "true"}


def inline(key: str, id: str, subject: str, plan: str | None = None) -> InlineApiKey:
    return InlineApiKey(
        id=id, sha256=hashlib.sha256(key.encode()).hexdigest(), subject=subject, plan=plan
    )


def test_inline_keys_match_by_digest() -> None:
    index = ApiKeyIndex([inline(ALICE_KEY, "k1", "alice", "gold")], namespace="shop")
    matched = index.match(ALICE_KEY)
    assert (matched.id, matched.subject, matched.plan) == ("k1", "alice", "gold")
    with pytest.raises(errors.UnknownApiKey):
        index.match(BOB_KEY)
    with pytest.raises(errors.UnknownApiKey):
        index.match(ALICE_KEY + " ")


def test_uppercase_hex_digest_in_policy_matches() -> None:
    key = InlineApiKey(id="k", sha256=hashlib.sha256(b"abc").hexdigest().upper(), subject="s")
    assert ApiKeyIndex([key], namespace="shop").match("abc").id == "k"


@pytest.mark.parametrize("presented", ["", "x" * (MAX_API_KEY_CHARS + 1)])
def test_malformed_keys(presented: str) -> None:
    with pytest.raises(errors.MalformedApiKey):
        ApiKeyIndex([], namespace="shop").match(presented)


def test_secret_keys_of_the_policy_namespace_with_matching_labels() -> None:
    table = SecretKeyTable()
    table.put("shop", "alice-key", SecretApiKey.from_key(ALICE_KEY, "alice", "gold", LABELS))
    table.put("other", "bob-key", SecretApiKey.from_key(BOB_KEY, "bob", None, LABELS))
    index = ApiKeyIndex([], namespace="shop", selector=LABELS, table=table)
    assert index.match(ALICE_KEY).id == "shop/alice-key"
    with pytest.raises(errors.UnknownApiKey):
        index.match(BOB_KEY)  # another namespace's Secret
    narrower = ApiKeyIndex([], namespace="shop", selector={**LABELS, "tier": "x"}, table=table)
    with pytest.raises(errors.UnknownApiKey):
        narrower.match(ALICE_KEY)
    without_selector = ApiKeyIndex([], namespace="shop", selector=None, table=table)
    with pytest.raises(errors.UnknownApiKey):
        without_selector.match(ALICE_KEY)  # Secrets are opt-in per policy


def test_same_key_in_two_namespaces_resolves_per_policy() -> None:
    table = SecretKeyTable()
    table.put("a", "k", SecretApiKey.from_key(ALICE_KEY, "alice-in-a"))
    table.put("b", "k", SecretApiKey.from_key(ALICE_KEY, "alice-in-b"))
    assert ApiKeyIndex([], namespace="b", selector={}, table=table).match(ALICE_KEY).subject == (
        "alice-in-b"
    )


def test_table_rotation_and_removal_are_seen_by_existing_indexes() -> None:
    table = SecretKeyTable()
    index = ApiKeyIndex([], namespace="shop", selector={}, table=table)
    table.put("shop", "s", SecretApiKey.from_key(ALICE_KEY, "alice"))
    assert index.match(ALICE_KEY).subject == "alice"
    table.put("shop", "s", SecretApiKey.from_key(BOB_KEY, "alice"))  # rotated
    with pytest.raises(errors.UnknownApiKey):
        index.match(ALICE_KEY)
    assert index.match(BOB_KEY).subject == "alice"
    table.remove("shop", "s")
    table.remove("shop", "never-existed")
    with pytest.raises(errors.UnknownApiKey):
        index.match(BOB_KEY)
    table.replace({("shop", "t"): SecretApiKey.from_key(ALICE_KEY, "carol")})
    assert index.match(ALICE_KEY).subject == "carol"
    assert len(table) == 1


def test_concurrent_writers_never_expose_a_partial_table() -> None:
    table = SecretKeyTable()
    index = ApiKeyIndex([], namespace="shop", selector={}, table=table)
    stable = SecretApiKey.from_key(ALICE_KEY, "alice")
    table.put("shop", "stable", stable)
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(300):
            table.put("shop", f"w{n}-{i}", SecretApiKey.from_key(f"key-{n}-{i}", "x"))
            table.remove("shop", f"w{n}-{i - 1}")

    def reader() -> None:
        try:
            for _ in range(3000):
                assert index.match(ALICE_KEY).subject == "alice"
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=reader))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert len(table) == 4  # stable + the last key of each writer


def test_no_plain_key_or_digest_in_reprs() -> None:
    secret = SecretApiKey.from_key(ALICE_KEY, "alice")
    table = SecretKeyTable({("shop", "s"): secret})
    index = ApiKeyIndex(
        [inline(ALICE_KEY, "k1", "alice")], namespace="shop", selector={}, table=table
    )
    matched = index.match(ALICE_KEY)
    hex_digest = digest_of(ALICE_KEY).hex()
    for text in (repr(secret), repr(table), repr(index), repr(matched), repr(table.entries())):
        assert ALICE_KEY not in text
        assert hex_digest not in text
        assert repr(digest_of(ALICE_KEY)) not in text


def test_mtls_principal() -> None:
    assert principal_subject("spiffe://cluster.local/ns/shop/sa/web") == (
        "spiffe://cluster.local/ns/shop/sa/web"
    )
    assert principal_subject("") is None
    assert principal_subject("a\nb") is None
    assert principal_subject("x" * 5000) is None


def test_revocation_helpers() -> None:
    check = revocation_check("t-1")
    assert check.key == revocation_key("t-1")
    assert is_revoked(RevocationResult(revoked=True))
    assert not is_revoked(RevocationResult(revoked=False))
    assert not is_revoked(None)
    assert not is_revoked(LimitResult(allowed=False, states=()))
    assert validate_jti("abc-123") == "abc-123"
    for bad in ("", "x" * 257, "a\nb"):
        with pytest.raises(ValueError, match="--jti"):
            validate_jti(bad)


@pytest.mark.parametrize(("subject", "plan"), [("", None), ("a\nb", None), ("ok", "x" * 257)])
def test_secret_annotations_must_fit_a_header(subject: str, plan: str | None) -> None:
    with pytest.raises(ValueError, match="printable"):
        SecretApiKey.from_key(ALICE_KEY, subject, plan)
