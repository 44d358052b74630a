"""Durations as the contract writes them: ``<n>s|m|h|d`` (``90s``, ``10m``, ``24h``, ``7d``)."""

from __future__ import annotations

import re

DURATION_PATTERN = r"^[1-9][0-9]{0,8}(s|m|h|d)$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Return the duration in whole seconds, or raise ValueError naming the accepted form."""
    if not isinstance(text, str) or not _DURATION_RE.match(text):
        raise ValueError(
            f"{text!r} is not a duration; use <n>s, <n>m, <n>h or <n>d (e.g. 90s, 24h)"
        )
    return int(text[:-1]) * _UNIT_SECONDS[text[-1]]


def format_duration(seconds: int) -> str:
    """The shortest exact contract spelling of a whole number of seconds."""
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
