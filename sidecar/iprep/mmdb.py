"""The ``--geoip`` databases: local MaxMind DB lookups, cached, hot-swapped on replacement.

Every file is opened with the ``maxminddb`` C extension, memory-mapped, and
recognised by its metadata ``database_type``:

- ``anonymous_ip`` (``*Anonymous-IP*``, ``*Anonymous-Plus*``): categories from the
  flags ``is_anonymous`` → ``anonymous``, ``is_anonymous_vpn`` → ``vpn``,
  ``is_hosting_provider`` → ``hosting``, ``is_public_proxy`` → ``public_proxy``,
  ``is_residential_proxy`` → ``residential_proxy``, ``is_tor_exit_node`` → ``tor``;
- ``asn`` (``*ASN*``, ``*ISP*``): ``autonomous_system_number``;
- ``geo`` (``*Country*``, ``*City*``, ``*Enterprise*``): ``country.iso_code`` (where
  the address is, not where its owner registered it) and
  ``traits.autonomous_system_number`` when present;
- ``categories`` (``AbuseSidecar*``, written by ``mmdb build``): ``category``, or
  ``categories`` for an address in several lists.

Any other type is refused: a database that silently contributes nothing would let an
operator believe a rule is enforced when it is not.

Several databases combine: categories are the union, country and ASN come from the
first database (in ``--geoip`` order) that has one.

**Updates.** A poll task (``start()``/``aclose()``) compares each path's stat
(device, inode, mtime, size) with the loaded file's; ``reload_changed()`` does one
such pass synchronously. A changed file is opened and probed before it replaces the
old reader; a truncated or corrupt file is refused with an error log line and the
old reader keeps serving until a good file appears. Replace files by renaming a
complete file over the old one, as ``geoipupdate`` and Kubernetes volume updates do:
a file rewritten in place changes under the memory map of the reader still serving it.

**Cost.** ``lookup`` is memoised in a bounded LRU keyed by the address string, so a
hot address costs one dictionary hit; a swap starts a fresh cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import maxminddb

from sidecar.errors import ConfigurationError

__all__ = [
    "ANONYMOUS_IP_FLAGS",
    "DatabaseKind",
    "GeoIpDatabaseError",
    "GeoIpDatabases",
    "IpFacts",
    "database_kind",
]

log = logging.getLogger(__name__)

# MaxMind Anonymous IP flag → contract category name.
ANONYMOUS_IP_FLAGS: tuple[tuple[str, str], ...] = (
    ("is_anonymous", "anonymous"),
    ("is_anonymous_vpn", "vpn"),
    ("is_hosting_provider", "hosting"),
    ("is_public_proxy", "public_proxy"),
    ("is_residential_proxy", "residential_proxy"),
    ("is_tor_exit_node", "tor"),
)

DEFAULT_CACHE_SIZE = 65_536
DEFAULT_POLL_SECONDS = 10.0

# Addresses looked up once when a file is opened, to catch corruption before the file
# serves traffic: spread over the IPv4 space plus a few IPv6 networks.
_PROBE_V4 = tuple(
    f"{a}.{(a * 7) % 256}.{(a * 13) % 256}.{(a * 31) % 256}" for a in range(0, 256, 5)
)
_PROBE_V6 = ("2001:db8::1", "2001:4860::8888", "2a00:1450::1", "2600::1", "fe80::1", "::1")
_PROBE_RECORDS = 64  # the first records in tree order, decoded in full
_V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


class GeoIpDatabaseError(ConfigurationError):
    """A ``--geoip`` file cannot be used (missing, not a MaxMind DB, corrupt, unsupported)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"GeoIP database {path}: {problem}")


class DatabaseKind(StrEnum):
    ANONYMOUS_IP = "anonymous_ip"
    ASN = "asn"
    GEO = "geo"
    CATEGORIES = "categories"


def database_kind(database_type: str) -> DatabaseKind | None:
    """The kind of a MaxMind DB from its metadata ``database_type``, None if unsupported."""
    if database_type.startswith("AbuseSidecar"):
        return DatabaseKind.CATEGORIES
    if "Anonymous-IP" in database_type or "Anonymous-Plus" in database_type:
        return DatabaseKind.ANONYMOUS_IP
    if "ASN" in database_type or "ISP" in database_type:
        return DatabaseKind.ASN
    if any(word in database_type for word in ("Country", "City", "Enterprise")):
        return DatabaseKind.GEO
    return None


@dataclass(frozen=True, slots=True)
class IpFacts:
    """What the databases know about one address."""

    categories: tuple[str, ...] = ()  # sorted, without duplicates
    country: str | None = None  # ISO 3166-1 alpha-2
    asn: int | None = None


NO_FACTS = IpFacts()

Signature = tuple[int, int, int, int]


def _signature(stat: os.stat_result) -> Signature:
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


class _Database:
    """One opened file. Immutable but for its error counter."""

    __slots__ = (
        "build_epoch",
        "database_type",
        "ip_version",
        "kind",
        "loaded_at",
        "lookup_errors",
        "node_count",
        "path",
        "reader",
        "signature",
    )

    def __init__(self, path: Path, reader: Any, signature: Signature, loaded_at: float) -> None:
        metadata = reader.metadata()
        self.path = path
        self.reader = reader
        self.signature = signature
        self.loaded_at = loaded_at
        self.database_type: str = str(metadata.database_type)
        self.build_epoch: int = int(metadata.build_epoch)
        self.ip_version: int = int(metadata.ip_version)
        self.node_count: int = int(metadata.node_count)
        kind = database_kind(self.database_type)
        if kind is None:
            raise GeoIpDatabaseError(
                path,
                f"unsupported database_type {self.database_type!r} (supported: Anonymous IP, "
                "Country, City, Enterprise, ASN, ISP and abuse-sidecar category databases)",
            )
        self.kind = kind
        self.lookup_errors = 0

    def close(self) -> None:
        self.reader.close()


def _open_database(path: Path) -> _Database:
    """Open and probe one file; GeoIpDatabaseError says what is wrong with it."""
    try:
        signature = _signature(os.stat(path))
    except OSError as exc:
        raise GeoIpDatabaseError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT)
    except OSError as exc:
        raise GeoIpDatabaseError(path, f"cannot read: {exc.strerror or exc}") from exc
    # maxminddb reports bad files as InvalidDatabaseError (a RuntimeError) or ValueError.
    except (RuntimeError, ValueError) as exc:
        raise GeoIpDatabaseError(path, f"not a valid MaxMind DB ({exc})") from exc
    try:
        database = _Database(path, reader, signature, time.time())
        _probe(database)
    except GeoIpDatabaseError:
        reader.close()
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reader.close()
        raise GeoIpDatabaseError(path, f"corrupt MaxMind DB ({exc})") from exc
    return database


def _probe(database: _Database) -> None:
    """Decode a sample of the tree and data; the C reader only checks metadata on open."""
    reader = database.reader
    for _ in itertools.islice(reader, _PROBE_RECORDS):
        pass
    for address in _PROBE_V4:
        reader.get(address)
    if database.ip_version == 6:
        for address in _PROBE_V6:
            reader.get(address)


# -- record readers, one per kind: (record, facts so far) -> None, appending in place


class _Accumulator:
    __slots__ = ("asn", "categories", "country")

    def __init__(self) -> None:
        self.categories: list[str] = []
        self.country: str | None = None
        self.asn: int | None = None


def _read_anonymous_ip(record: dict[str, Any], acc: _Accumulator) -> None:
    for flag, category in ANONYMOUS_IP_FLAGS:
        if record.get(flag):
            acc.categories.append(category)


def _read_asn(record: dict[str, Any], acc: _Accumulator) -> None:
    if acc.asn is None:
        number = record.get("autonomous_system_number")
        if isinstance(number, int):
            acc.asn = number


def _read_geo(record: dict[str, Any], acc: _Accumulator) -> None:
    if acc.country is None:
        country = record.get("country")
        if country:
            code = country.get("iso_code")
            if isinstance(code, str):
                acc.country = code
    if acc.asn is None:
        traits = record.get("traits")
        if traits:
            number = traits.get("autonomous_system_number")
            if isinstance(number, int):
                acc.asn = number


def _read_categories(record: dict[str, Any], acc: _Accumulator) -> None:
    many = record.get("categories")
    if isinstance(many, list):
        acc.categories.extend(name for name in many if isinstance(name, str))
        return
    one = record.get("category")
    if isinstance(one, str):
        acc.categories.append(one)


_READERS: dict[DatabaseKind, Callable[[dict[str, Any], _Accumulator], None]] = {
    DatabaseKind.ANONYMOUS_IP: _read_anonymous_ip,
    DatabaseKind.ASN: _read_asn,
    DatabaseKind.GEO: _read_geo,
    DatabaseKind.CATEGORIES: _read_categories,
}


def _lookup_key(ip: str) -> str:
    """``::ffff:a.b.c.d`` (any spelling) as ``a.b.c.d``: databases built by ``mmdb build``
    or other writers may not alias the IPv4-mapped range onto IPv4 as MaxMind does."""
    if ":" in ip:
        try:
            packed = socket.inet_pton(socket.AF_INET6, ip)
        except (OSError, ValueError):
            return ip
        if packed[:12] == _V4_MAPPED_PREFIX:
            return socket.inet_ntop(socket.AF_INET, packed[12:])
    return ip


def _make_lookup(databases: tuple[_Database, ...]) -> Callable[[str], IpFacts]:
    plan = tuple((db, db.reader.get, _READERS[db.kind]) for db in databases)

    def lookup_uncached(ip: str) -> IpFacts:
        key = _lookup_key(ip)
        acc = _Accumulator()
        for db, get, read in plan:
            try:
                record = get(key)
            except ValueError:
                # Not an address, an IPv6 address in an IPv4-only database, or a
                # reader closed by a swap that raced this lookup: nothing known here.
                continue
            except RuntimeError:  # InvalidDatabaseError: corruption the probe missed
                db.lookup_errors += 1
                continue
            if record:  # MaxMind returns {} as well as None for "nothing listed"
                read(record, acc)
        if not acc.categories and acc.country is None and acc.asn is None:
            return NO_FACTS
        categories = tuple(sorted(set(acc.categories)))
        return IpFacts(categories, acc.country, acc.asn)

    return lookup_uncached


@dataclass(slots=True)
class _Slot:
    """One ``--geoip`` path: the file serving it and what happened to its replacements."""

    path: Path
    current: _Database
    refused_signature: Signature | None = None
    last_error: str | None = None
    changed_at: float = 0.0


class GeoIpDatabases:
    """Every ``--geoip`` database, looked up together.

    Construction opens every path and raises GeoIpDatabaseError on the first one that
    is unusable: a sidecar told to enforce IP rules must not start without its data.
    """

    def __init__(
        self,
        paths: Iterable[Path | str],
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self._cache_size = cache_size
        self._poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self._slots: list[_Slot] = []
        try:
            for path in paths:
                database = _open_database(Path(path))
                self._slots.append(_Slot(database.path, database, changed_at=database.loaded_at))
                log.info(
                    "GeoIP database %s loaded: %s built %s",
                    database.path,
                    database.database_type,
                    _iso(database.build_epoch),
                )
        except GeoIpDatabaseError:
            self.close()
            raise
        self._cached: Callable[[str], IpFacts] = lambda ip: NO_FACTS
        self.kinds: frozenset[DatabaseKind] = frozenset()
        self._publish()

    # -- lookups -------------------------------------------------------------

    def lookup(self, ip: str) -> IpFacts:
        """Categories, country and ASN of ``ip``; ``NO_FACTS`` for an unknown or invalid one."""
        return self._cached(ip)

    def cache_info(self) -> dict[str, int]:
        """Hits, misses and size of the lookup cache since the last swap."""
        info = getattr(self._cached, "cache_info", None)
        if info is None:
            return {"hits": 0, "misses": 0, "size": 0, "maxSize": self._cache_size}
        stats = info()
        return {
            "hits": stats.hits,
            "misses": stats.misses,
            "size": stats.currsize,
            "maxSize": self._cache_size,
        }

    @property
    def available(self) -> bool:
        """At least one database is loaded."""
        return bool(self._slots)

    @property
    def knows_categories(self) -> bool:
        return DatabaseKind.ANONYMOUS_IP in self.kinds or DatabaseKind.CATEGORIES in self.kinds

    @property
    def knows_country(self) -> bool:
        return DatabaseKind.GEO in self.kinds

    @property
    def knows_asn(self) -> bool:
        # Only Enterprise among geo databases carries an ASN; do not claim it for all.
        return DatabaseKind.ASN in self.kinds

    def _publish(self) -> None:
        databases = tuple(slot.current for slot in self._slots)
        self.kinds = frozenset(db.kind for db in databases)
        # A new cache object rather than cache_clear(): a lookup racing the swap on
        # another thread can only fill the cache being discarded.
        self._cached = lru_cache(maxsize=self._cache_size)(_make_lookup(databases))

    # -- updates -------------------------------------------------------------

    def reload_changed(self) -> list[Path]:
        """Reopen every file whose stat changed; returns the paths now serving a new file.

        A refused file is not retried until its stat changes again, so a bad file logs
        one error, not one per poll.
        """
        swapped: list[Path] = []
        retired: list[_Database] = []
        for slot in self._slots:
            try:
                signature = _signature(os.stat(slot.path))
            except OSError as exc:
                self._refuse(slot, None, f"cannot read: {exc.strerror or exc}")
                continue
            if signature == slot.current.signature:
                if slot.last_error is not None:  # the serving file is back on disk
                    slot.last_error = None
                    slot.refused_signature = None
                continue
            if signature == slot.refused_signature:
                continue
            try:
                database = _open_database(slot.path)
            except GeoIpDatabaseError as exc:
                self._refuse(slot, signature, exc.problem)
                continue
            retired.append(slot.current)
            previous = slot.current
            slot.current = database
            slot.refused_signature = None
            slot.last_error = None
            slot.changed_at = database.loaded_at
            swapped.append(slot.path)
            log.info(
                "GeoIP database %s replaced: now %s built %s (was %s built %s)",
                slot.path,
                database.database_type,
                _iso(database.build_epoch),
                previous.database_type,
                _iso(previous.build_epoch),
            )
        if swapped:
            self._publish()
        for database in retired:
            database.close()
        return swapped

    def _refuse(self, slot: _Slot, signature: Signature | None, problem: str) -> None:
        if slot.last_error == problem and slot.refused_signature == signature:
            return
        slot.refused_signature = signature
        slot.last_error = problem
        slot.changed_at = time.time()
        log.error(
            "GeoIP database %s refused: %s; still serving the previous file (%s built %s)",
            slot.path,
            problem,
            slot.current.database_type,
            _iso(slot.current.build_epoch),
        )

    async def start(self) -> None:
        """Start polling the files for replacement (no-op without files or when running)."""
        if self._task is None and self._slots and self._poll_seconds > 0:
            self._task = asyncio.create_task(self._poll(), name="geoip-reload")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                self.reload_changed()
            except Exception:  # keep polling: the next pass may succeed
                log.exception("GeoIP database reload pass failed")

    async def aclose(self) -> None:
        """Stop polling and close every reader."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()

    def close(self) -> None:
        for slot in self._slots:
            slot.current.close()
        self._slots = []
        self._cached = lambda ip: NO_FACTS
        self.kinds = frozenset()

    # -- reporting -----------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Per file, for ``/readyz`` and ``/policies``.

        ``state`` is ``loaded`` when the file on disk is the one serving, ``stale`` when
        the file on disk was refused (``lastError`` says why) and the previous one serves.
        """
        return [
            {
                "path": str(slot.path),
                "type": slot.current.database_type,
                "kind": slot.current.kind.value,
                "buildDate": _iso(slot.current.build_epoch),
                "ipVersion": slot.current.ip_version,
                "loadedAt": _iso(slot.current.loaded_at),
                "state": "loaded" if slot.last_error is None else "stale",
                "lastError": slot.last_error,
                "lookupErrors": slot.current.lookup_errors,
            }
            for slot in self._slots
        ]

    @property
    def paths(self) -> Sequence[Path]:
        return [slot.path for slot in self._slots]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")
