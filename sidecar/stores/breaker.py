"""A circuit breaker: after repeated failures, stop calling a dead backend.

While open, every call fails at once (no socket, no timeout to wait for) until a
probe finds the backend answering again. The store runs the probe; the breaker
only keeps the state and says what happened last, for ``/readyz``.
"""

from __future__ import annotations

from sidecar.clock import SYSTEM_CLOCK, Clock


class CircuitBreaker:
    __slots__ = ("_clock", "_failures", "_threshold", "last_error", "open", "opened_at")

    def __init__(self, failure_threshold: int = 3, clock: Clock = SYSTEM_CLOCK) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._threshold = failure_threshold
        self._clock = clock
        self._failures = 0
        self.open = False
        self.opened_at = 0.0
        self.last_error = ""

    def record_success(self) -> None:
        self._failures = 0
        self.open = False

    def record_failure(self, detail: str) -> bool:
        """Count one failure; True when this failure opened the breaker."""
        self.last_error = detail
        self._failures += 1
        if self.open or self._failures < self._threshold:
            return False
        self.open = True
        self.opened_at = self._clock.monotonic()
        return True

    def describe(self) -> str:
        if not self.open:
            return "closed"
        since = self._clock.monotonic() - self.opened_at
        return f"circuit open for {since:.1f}s after: {self.last_error}"
