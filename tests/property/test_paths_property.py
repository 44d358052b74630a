"""Path normalisation and matching never crash and cannot be dodged."""

from __future__ import annotations

import contextlib
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from sidecar.compiled.paths import PathSet, normalize_path
from sidecar.model.durations import format_duration, parse_duration

segment = st.text(
    alphabet=st.characters(blacklist_characters="/?#", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
)


@given(st.text(max_size=200))
def test_normalize_never_raises_and_is_rooted(raw: str) -> None:
    out = normalize_path(raw)
    assert out.startswith("/")
    assert "//" not in out


@given(st.text(max_size=100).filter(lambda s: "%" not in s))
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_path(raw)
    assert normalize_path(once) == once


@given(
    st.lists(
        segment.filter(lambda s: s not in (".", "..") and "%" not in s and "\\" not in s),
        min_size=1,
        max_size=5,
    )
)
def test_encoded_and_dotted_variants_still_match(parts: list[str]) -> None:
    target = "/" + "/".join(parts)
    paths = PathSet.compile([target], empty_matches_all=False)
    assert paths.matches(normalize_path(target))
    assert paths.matches(normalize_path("//" + "//".join(parts)))
    assert paths.matches(normalize_path("/x/../" + "/./".join(parts)))
    assert paths.matches(normalize_path("/" + "/".join(quote(p, safe="") for p in parts)))


@given(
    st.lists(
        segment.filter(lambda s: s not in (".", "..") and "%" not in s and "\\" not in s),
        min_size=1,
        max_size=4,
    ),
    st.lists(
        segment.filter(lambda s: s not in (".", "..") and "%" not in s and "\\" not in s),
        max_size=4,
    ),
)
def test_double_star_matches_any_rest(prefix: list[str], rest: list[str]) -> None:
    paths = PathSet.compile(["/" + "/".join(prefix) + "/**"], empty_matches_all=False)
    assert paths.matches(normalize_path("/" + "/".join(prefix + rest)))


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_duration_round_trip(n: int, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=12))
def test_duration_parser_never_raises_anything_but_value_error(raw: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_duration(raw) > 0
