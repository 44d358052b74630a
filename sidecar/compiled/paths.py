"""Path normalisation (RFC 3986) and the contract's path patterns.

Patterns are compiled once: exact paths go into a set, ``*``/``**`` patterns into
segment tuples matched without regular expressions. Matching is case-sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote


def split_path(raw: str) -> tuple[str, str]:
    """Split ``/a/b?x=1`` into the path and the query (without ``?``); drops a fragment."""
    hash_at = raw.find("#")
    if hash_at >= 0:
        raw = raw[:hash_at]
    query_at = raw.find("?")
    if query_at < 0:
        return raw, ""
    return raw[:query_at], raw[query_at + 1 :]


def normalize_path(path: str) -> str:
    """Percent-decode, merge slashes, remove dot segments; always starts with ``/``.

    Decoding happens first so ``/%2e%2e/admin`` and ``/a/%2F..`` cannot dodge a
    pattern; the result is what the patterns are matched against.
    """
    if "%" in path:
        path = unquote(path, errors="replace")
    if "\\" in path:
        path = path.replace("\\", "/")
    # Fast path: already normal (the common case for real traffic).
    if "//" not in path and "/." not in path and path.startswith("/"):
        return path
    out: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = path.endswith(("/", "/.", "/..")) and bool(out)
    result = "/" + "/".join(out)
    if trailing:
        result += "/"
    return result


@dataclass(frozen=True, slots=True)
class _Wildcard:
    segments: tuple[str, ...]  # "*" matches one segment
    rest: bool  # pattern ended in "**": any remainder, including none


def _compile_wildcard(pattern: str) -> _Wildcard:
    parts = pattern.strip("/").split("/") if pattern != "/" else []
    rest = bool(parts) and parts[-1] == "**"
    if rest:
        parts = parts[:-1]
    return _Wildcard(tuple(parts), rest)


@dataclass(frozen=True, slots=True)
class PathSet:
    """A compiled list of path patterns; ``matches`` is the hot-path call."""

    exact: frozenset[str]
    wildcards: tuple[_Wildcard, ...]
    any_path: bool  # the list was empty: every path matches
    # Wildcards by their first segment when it is literal: a path is only tried
    # against those sharing its first segment, plus the ones starting with "*".
    by_first: dict[str, tuple[_Wildcard, ...]] = field(default_factory=dict, hash=False)
    open_first: tuple[_Wildcard, ...] = ()

    @classmethod
    def compile(cls, patterns: Iterable[str], *, empty_matches_all: bool = True) -> PathSet:
        exact: set[str] = set()
        wildcards: list[_Wildcard] = []
        patterns = list(patterns)
        for pattern in patterns:
            normal = normalize_path(pattern)
            if "*" in normal:
                wildcards.append(_compile_wildcard(normal))
            else:
                exact.add(normal)
                # "/reviews" and "/reviews/" name the same resource for users.
                exact.add(normal.rstrip("/") or "/")
        by_first: dict[str, list[_Wildcard]] = {}
        open_first: list[_Wildcard] = []
        for wildcard in wildcards:
            first = wildcard.segments[0] if wildcard.segments else "*"
            if first == "*":
                open_first.append(wildcard)
            else:
                by_first.setdefault(first, []).append(wildcard)
        return cls(
            frozenset(exact),
            tuple(wildcards),
            empty_matches_all and not patterns,
            {first: tuple(group) for first, group in by_first.items()},
            tuple(open_first),
        )

    def matches(self, path: str) -> bool:
        if self.any_path or path in self.exact:
            return True
        if not self.wildcards:
            return False
        if len(path) > 1 and path.endswith("/") and path[:-1] in self.exact:
            return True
        parts = path.strip("/").split("/") if path != "/" else []
        candidates = self.by_first.get(parts[0], ()) if parts else ()
        for wildcard in candidates:
            if _match(wildcard, parts):
                return True
        for wildcard in self.open_first:  # noqa: SIM110 -- any(genexpr) costs more per Check
            if _match(wildcard, parts):
                return True
        return False


def _match(wildcard: _Wildcard, parts: list[str]) -> bool:
    fixed = wildcard.segments
    if wildcard.rest:
        if len(parts) < len(fixed):
            return False
    elif len(parts) != len(fixed):
        return False
    return all(not (want not in ("*", have)) for want, have in zip(fixed, parts, strict=False))


@dataclass(frozen=True, slots=True)
class RequestMatcher:
    """``match: {methods, paths}``: empty lists match everything."""

    methods: frozenset[str]
    paths: PathSet

    @classmethod
    def compile(cls, methods: Iterable[str], paths: Iterable[str]) -> RequestMatcher:
        return cls(frozenset(m.upper() for m in methods), PathSet.compile(paths))

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return self.paths.matches(path)
