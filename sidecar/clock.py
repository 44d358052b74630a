"""Time, injected wherever it matters so tests can control it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for windows aligned to UTC)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back (for TTLs and caches)."""


class SystemClock:
    __slots__ = ()

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
