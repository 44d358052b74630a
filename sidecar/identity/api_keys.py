"""API keys matched by SHA-256 digest; no plain key is ever stored.

Inline keys come from the policy as hex digests. Keys from Kubernetes Secrets
live in a process-wide ``SecretKeyTable`` that the watcher fills (hashing each key
as it reads the Secret); a policy uses the Secrets of its own namespace whose
labels match its ``secretSelector``.

The presented key is hashed once and looked up by digest, then confirmed with
``hmac.compare_digest``. Lookup timing depends on the digest, which an attacker
cannot steer towards a real key, so it reveals nothing about stored keys.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from sidecar.identity.errors import MalformedApiKey, UnknownApiKey
from sidecar.model.policy import InlineApiKey

MAX_API_KEY_CHARS: Final = 4096


def digest_of(key: str | bytes) -> bytes:
    """SHA-256 of a key as presented (UTF-8 for text)."""
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class ApiKeyIdentity:
    """Who a matched key belongs to. ``id`` names the key (inline id or ``ns/secret``)."""

    id: str
    subject: str
    plan: str | None


@dataclass(frozen=True, slots=True)
class SecretApiKey:
    """One key from a Secret, already hashed."""

    digest: bytes = field(repr=False)
    subject: str
    plan: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_key(
        cls,
        key: str | bytes,
        subject: str,
        plan: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> SecretApiKey:
        """Hash ``key`` immediately; the caller should drop its copy. Raises ValueError
        for a subject or plan that cannot travel in a header (from Secret annotations)."""
        for name, value in (("subject", subject), ("plan", plan)):
            if value is not None and not (0 < len(value) <= 256 and value.isprintable()):
                raise ValueError(
                    f"{name} must be 1-256 printable characters (abuse.sidecar.dev/{name})"
                )
        return cls(digest_of(key), subject, plan, MappingProxyType(dict(labels or {})))


SecretRef = tuple[str, str]  # (namespace, secret name)
_Match = tuple[str, str, SecretApiKey]


@dataclass(frozen=True, slots=True)
class _TableSnapshot:
    by_ref: Mapping[SecretRef, SecretApiKey]
    by_digest: Mapping[bytes, tuple[_Match, ...]]

    @classmethod
    def of(cls, by_ref: Mapping[SecretRef, SecretApiKey]) -> _TableSnapshot:
        by_digest: dict[bytes, tuple[_Match, ...]] = {}
        for (namespace, name), key in sorted(by_ref.items()):
            by_digest[key.digest] = (*by_digest.get(key.digest, ()), (namespace, name, key))
        return cls(MappingProxyType(dict(by_ref)), MappingProxyType(by_digest))


class SecretKeyTable:
    """API keys from Secrets, shared by every policy of the process.

    Writers (the Kubernetes watcher, from any thread or task) build a new immutable
    snapshot under a lock and swap it in one assignment; readers on the request path
    take no lock and always see one complete snapshot.
    """

    __slots__ = ("_lock", "_snapshot")

    def __init__(self, entries: Mapping[SecretRef, SecretApiKey] | None = None) -> None:
        self._lock = threading.Lock()
        self._snapshot = _TableSnapshot.of(entries or {})

    def __repr__(self) -> str:
        return f"SecretKeyTable({len(self)} keys)"

    def __len__(self) -> int:
        return len(self._snapshot.by_ref)

    def replace(self, entries: Mapping[SecretRef, SecretApiKey]) -> None:
        """Swap in a complete set (after a list or a resync)."""
        snapshot = _TableSnapshot.of(entries)
        with self._lock:
            self._snapshot = snapshot

    def put(self, namespace: str, name: str, key: SecretApiKey) -> None:
        """Add or rotate the key of one Secret."""
        with self._lock:
            by_ref = dict(self._snapshot.by_ref)
            by_ref[(namespace, name)] = key
            self._snapshot = _TableSnapshot.of(by_ref)

    def remove(self, namespace: str, name: str) -> None:
        """Forget a deleted (or unlabelled) Secret; unknown names are ignored."""
        with self._lock:
            if (namespace, name) not in self._snapshot.by_ref:
                return
            by_ref = dict(self._snapshot.by_ref)
            del by_ref[(namespace, name)]
            self._snapshot = _TableSnapshot.of(by_ref)

    def entries(self) -> Mapping[SecretRef, SecretApiKey]:
        return self._snapshot.by_ref

    def lookup(self, digest: bytes) -> tuple[_Match, ...]:
        """Every ``(namespace, name, key)`` whose key has this digest."""
        return self._snapshot.by_digest.get(digest, ())


@dataclass(frozen=True, slots=True)
class _Inline:
    digest: bytes = field(repr=False)
    identity: ApiKeyIdentity


class ApiKeyIndex:
    """The keys one policy accepts: its inline digests plus, when it has a
    ``secretSelector``, the matching Secrets of its namespace."""

    __slots__ = ("_inline", "_namespace", "_selector", "_table")

    def __init__(
        self,
        inline: Iterable[InlineApiKey],
        *,
        namespace: str,
        selector: Mapping[str, str] | None = None,
        table: SecretKeyTable | None = None,
    ) -> None:
        self._inline: Mapping[bytes, _Inline] = {
            bytes.fromhex(key.sha256): _Inline(
                bytes.fromhex(key.sha256), ApiKeyIdentity(key.id, key.subject, key.plan)
            )
            for key in inline
        }
        self._namespace = namespace
        self._selector = tuple((selector or {}).items()) if selector is not None else None
        self._table = table if selector is not None else None

    def __repr__(self) -> str:
        secrets = "off" if self._table is None else f"namespace {self._namespace}"
        return f"ApiKeyIndex(inline={len(self._inline)}, secrets={secrets})"

    def match(self, presented: str) -> ApiKeyIdentity:
        """Identify a presented key or raise ``MalformedApiKey``/``UnknownApiKey``."""
        if not presented or len(presented) > MAX_API_KEY_CHARS:
            raise MalformedApiKey
        digest = digest_of(presented)
        inline = self._inline.get(digest)
        if inline is not None and hmac.compare_digest(inline.digest, digest):
            return inline.identity
        if self._table is not None:
            for namespace, name, key in self._table.lookup(digest):
                if (
                    namespace == self._namespace
                    and hmac.compare_digest(key.digest, digest)
                    and self._selected(key.labels)
                ):
                    return ApiKeyIdentity(f"{namespace}/{name}", key.subject, key.plan)
        raise UnknownApiKey

    def _selected(self, labels: Mapping[str, str]) -> bool:
        assert self._selector is not None
        return all(labels.get(name) == value for name, value in self._selector)
