"""``abuse-sidecar mmdb build``: plain CIDR lists → a MaxMind DB of categories for ``--geoip``.

Input: one file or more per category, one IP address or CIDR per line, IPv4 or
IPv6; ``#`` starts a comment; blank lines are skipped; host bits are ignored
(``10.1.2.3/8`` is ``10.0.0.0/8``).

Output: a MaxMind DB (binary format 2.0, IPv6 tree, IPv4 at ``::/96`` and aliased
at ``::ffff:0:0/96`` as MaxMind's own databases are), ``database_type``
``AbuseSidecar-Categories``. Every address listed gets the record
``{"category": NAME}``; an address in several categories (overlapping lists) gets
``{"category": FIRST, "categories": [FIRST, SECOND, ...]}`` in ``--category`` order,
so no list hides another. IPv6 networks inside ``::/96`` or ``::ffff:0:0/96`` are
the IPv4 addresses they spell. The file is written next to ``--out`` and renamed
over it, so a running sidecar watching ``--out`` swaps to it cleanly.

The writer is ours (the format is short: a binary search tree, a 16-byte separator,
a data section and a metadata map; https://maxmind.github.io/MaxMind-DB/); it is
read back with the same ``maxminddb`` reader that serves requests.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from sidecar.errors import SidecarError

__all__ = [
    "DATABASE_TYPE",
    "MmdbBuildError",
    "build_mmdb",
    "encode_mmdb",
    "parse_category_args",
    "read_cidr_list",
]

DATABASE_TYPE = "AbuseSidecar-Categories"
# Same rule as the policy's category names, so every built category can be denied.
CATEGORY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Categories = frozenset[str]

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_DATA_SEPARATOR = b"\0" * 16
_IPV4_COMPAT = ipaddress.IPv6Network("::/96")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

# Data section type numbers (MaxMind DB spec, "Output Data Section").
_UTF8, _MAP, _UINT16, _UINT32, _UINT64, _UINT128, _ARRAY, _BOOLEAN = 2, 7, 5, 6, 9, 10, 11, 14


class MmdbBuildError(SidecarError, ValueError):
    """An input of ``mmdb build`` is unusable; the message names the file and line.

    Also a ValueError, so callers treating bad input as a usage error catch it."""


def parse_category_args(values: Sequence[str]) -> dict[str, list[Path]]:
    """``["tor=tor.txt", "scanner=a.txt", "scanner=b.txt"]`` → ``{"tor": [...], ...}``."""
    categories: dict[str, list[Path]] = {}
    for value in values:
        name, sep, file = value.partition("=")
        name = name.strip()
        if not sep or not file:
            raise MmdbBuildError(f"--category {value!r}: expected NAME=CIDR_LIST_FILE")
        _check_category_name(name)
        categories.setdefault(name, []).append(Path(file))
    return categories


def read_cidr_list(path: Path) -> list[IPNetwork]:
    """The networks listed in one file (see module docstring for the format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MmdbBuildError(f"{path}: cannot read: {exc}") from exc
    networks: list[IPNetwork] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise MmdbBuildError(
                f"{path}:{number}: {entry!r} is not an IP address or CIDR"
            ) from None
    return networks


def build_mmdb(
    out: Path,
    categories: Mapping[str, Sequence[Path]],
    *,
    build_epoch: int | None = None,
) -> int:
    """Read every list and write ``out``; returns the number of (category, network)
    entries written. Raises MmdbBuildError naming the file and line of a bad entry."""
    if not categories:
        raise MmdbBuildError("no --category given: nothing to build")
    networks: dict[str, list[IPNetwork]] = {}
    for name, files in categories.items():
        _check_category_name(name)
        networks[name] = [network for file in files for network in read_cidr_list(file)]
    image = encode_mmdb(networks, build_epoch=build_epoch)
    _write_atomically(out, image)
    return sum(len(set(listed)) for listed in networks.values())


def _check_category_name(name: str) -> None:
    if not CATEGORY_NAME.fullmatch(name):
        raise MmdbBuildError(
            f"category {name!r}: use lower-case letters, digits, '_' and '-', "
            "starting with a letter (at most 63 characters), as in denyCategories"
        )


def _write_atomically(out: Path, image: bytes) -> None:
    directory = out.parent if str(out.parent) else Path()
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(image)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # readable by a sidecar running as another user
        os.replace(temporary, out)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise MmdbBuildError(f"{out}: cannot write: {exc}") from exc


# -- search tree ---------------------------------------------------------------


class _TrieNode:
    """Input trie: ``categories`` cover the whole subtree below this node."""

    __slots__ = ("categories", "children")

    def __init__(self) -> None:
        self.children: list[_TrieNode | _Graft | None] = [None, None]
        self.categories: set[str] | None = None


class _Graft:
    """Where the IPv6 tree continues into the shared IPv4 subtree."""


_GRAFT_POINT = _Graft()


class _TreeNode:
    """Output tree: a node whose two records are a data set (a leaf) or a node."""

    __slots__ = ("left", "right")

    def __init__(self, left: _TreeNode | Categories, right: _TreeNode | Categories) -> None:
        self.left = left
        self.right = right


def _insert(root: _TrieNode, value: int, prefix: int, bits: int, category: str) -> None:
    node = root
    for depth in range(prefix):
        bit = (value >> (bits - 1 - depth)) & 1
        child = node.children[bit]
        if not isinstance(child, _TrieNode):  # grafts are added after every insert
            child = _TrieNode()
            node.children[bit] = child
        node = child
    if node.categories is None:
        node.categories = {category}
    else:
        node.categories.add(category)


def _add_graft(root: _TrieNode, network: ipaddress.IPv6Network) -> None:
    """Route ``network`` (a /96) of the IPv6 trie into the IPv4 subtree."""
    value = int(network.network_address)
    node = root
    for depth in range(95):
        bit = (value >> (127 - depth)) & 1
        child = node.children[bit]
        if not isinstance(child, _TrieNode):
            child = _TrieNode()
            node.children[bit] = child
        node = child
    node.children[(value >> 32) & 1] = _GRAFT_POINT


def _compact(
    node: _TrieNode | _Graft | None,
    inherited: Categories,
    ipv4: _TreeNode | Categories,
) -> _TreeNode | Categories:
    """The output subtree of ``node``: leaves carry every category covering them;
    a node whose two halves are the same leaf becomes that leaf."""
    if node is None:
        return inherited
    if isinstance(node, _Graft):
        return ipv4
    covering = inherited | node.categories if node.categories else inherited
    if node.children[0] is None and node.children[1] is None:
        return covering
    left = _compact(node.children[0], covering, ipv4)
    right = _compact(node.children[1], covering, ipv4)
    if isinstance(left, frozenset) and left == right:
        return left
    return _TreeNode(left, right)


def _build_tree(networks: Mapping[str, Iterable[IPNetwork]]) -> _TreeNode:
    v4_root, v6_root = _TrieNode(), _TrieNode()
    covers_all_ipv4: set[str] = set()
    for category, listed in networks.items():
        for network in listed:
            if isinstance(network, ipaddress.IPv6Network):
                if network.prefixlen >= 96 and (
                    network.subnet_of(_IPV4_MAPPED) or network.subnet_of(_IPV4_COMPAT)
                ):
                    low32 = int(network.network_address) & 0xFFFFFFFF
                    _insert(v4_root, low32, network.prefixlen - 96, 32, category)
                    continue
                if _IPV4_MAPPED.subnet_of(network) or _IPV4_COMPAT.subnet_of(network):
                    covers_all_ipv4.add(category)
                _insert(v6_root, int(network.network_address), network.prefixlen, 128, category)
            else:
                _insert(v4_root, int(network.network_address), network.prefixlen, 32, category)
    if covers_all_ipv4:
        v4_root.categories = (v4_root.categories or set()) | covers_all_ipv4
    ipv4 = _compact(v4_root, frozenset(), frozenset())
    _add_graft(v6_root, _IPV4_COMPAT)
    _add_graft(v6_root, _IPV4_MAPPED)
    tree = _compact(v6_root, frozenset(), ipv4)
    if isinstance(tree, frozenset):  # a reader needs at least one node
        return _TreeNode(tree, tree)
    return tree


# -- encoding ----------------------------------------------------------------


def encode_mmdb(
    networks: Mapping[str, Iterable[IPNetwork]],
    *,
    build_epoch: int | None = None,
    record_size: int | None = None,
) -> bytes:
    """The bytes of a category database. ``record_size`` (24, 28 or 32) defaults to the
    smallest that fits; tests force the others."""
    # The trees are acyclic, so reference counting frees them; the cyclic collector
    # would only rescan millions of young nodes again and again while they are built.
    with _cyclic_gc_paused():
        return _encode_mmdb(networks, build_epoch, record_size)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _encode_mmdb(
    networks: Mapping[str, Iterable[IPNetwork]], build_epoch: int | None, record_size: int | None
) -> bytes:
    order = {name: index for index, name in enumerate(networks)}
    root = _build_tree(networks)

    nodes: list[_TreeNode] = []
    numbers: dict[int, int] = {}
    leaves: list[Categories] = []
    queue = [root]
    while queue:  # breadth first; the IPv4 subtree is reached twice and numbered once
        pending: list[_TreeNode] = []
        for node in queue:
            if id(node) in numbers:
                continue
            numbers[id(node)] = len(nodes)
            nodes.append(node)
            for record in (node.left, node.right):
                if isinstance(record, _TreeNode):
                    pending.append(record)
                elif record:
                    leaves.append(record)
        queue = pending

    data = bytearray()
    offsets: dict[Categories, int] = {}
    for categories in leaves:
        if categories not in offsets:
            offsets[categories] = len(data)
            names = sorted(categories, key=order.__getitem__)
            fields: dict[str, object] = {"category": names[0]}
            if len(names) > 1:
                fields["categories"] = names
            data += _encode(fields)

    node_count = len(nodes)

    def record_value(record: _TreeNode | Categories) -> int:
        if isinstance(record, _TreeNode):
            return numbers[id(record)]
        if not record:
            return node_count  # "no data" marker
        return node_count + len(_DATA_SEPARATOR) + offsets[record]

    largest = node_count + len(_DATA_SEPARATOR) + len(data)
    if record_size is None:
        record_size = next(size for size in (24, 28, 32) if largest < 1 << size)
    elif record_size not in (24, 28, 32) or largest >= 1 << record_size:
        raise ValueError(f"record_size {record_size} cannot hold {largest}")

    tree = bytearray()
    for node in nodes:
        tree += _encode_node(record_value(node.left), record_value(node.right), record_size)

    metadata = {
        "binary_format_major_version": (_UINT16, 2),
        "binary_format_minor_version": (_UINT16, 0),
        "build_epoch": (_UINT64, int(time.time()) if build_epoch is None else build_epoch),
        "database_type": DATABASE_TYPE,
        "description": {"en": "abuse-sidecar categories: " + ", ".join(networks)},
        "ip_version": (_UINT16, 6),
        "languages": ["en"],
        "node_count": (_UINT32, node_count),
        "record_size": (_UINT16, record_size),
    }
    return bytes(tree + _DATA_SEPARATOR + data + _METADATA_MARKER + _encode(metadata))


def _encode_node(left: int, right: int, record_size: int) -> bytes:
    if record_size == 24:
        return left.to_bytes(3, "big") + right.to_bytes(3, "big")
    if record_size == 28:
        middle = ((left >> 24) << 4) | (right >> 24)
        return (
            (left & 0xFFFFFF).to_bytes(3, "big")
            + bytes([middle])
            + (right & 0xFFFFFF).to_bytes(3, "big")
        )
    return left.to_bytes(4, "big") + right.to_bytes(4, "big")


def _control(type_number: int, size: int) -> bytes:
    if type_number <= 7:
        head, extended = type_number << 5, b""
    else:
        head, extended = 0, bytes([type_number - 7])
    if size < 29:
        return bytes([head | size]) + extended
    if size < 29 + 256:
        return bytes([head | 29]) + extended + bytes([size - 29])
    if size < 285 + 65536:
        return bytes([head | 30]) + extended + (size - 285).to_bytes(2, "big")
    return bytes([head | 31]) + extended + (size - 65821).to_bytes(3, "big")


def _encode(value: object) -> bytes:
    """Encode a data-section value. Integers are given as (type, value) pairs because
    the format distinguishes uint16/32/64/128 and readers check metadata types."""
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(_UTF8, len(raw)) + raw
    if isinstance(value, bool):
        return _control(_BOOLEAN, int(value))
    if isinstance(value, tuple):
        type_number, number = value
        assert isinstance(type_number, int)
        assert isinstance(number, int)
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        return _control(type_number, len(raw)) + raw
    if isinstance(value, dict):
        out = bytearray(_control(_MAP, len(value)))
        for key, item in value.items():
            out += _encode(key) + _encode(item)
        return bytes(out)
    if isinstance(value, list):
        out = bytearray(_control(_ARRAY, len(value)))
        for item in value:
            out += _encode(item)
        return bytes(out)
    raise TypeError(f"cannot encode {type(value).__name__} in a MaxMind DB")
