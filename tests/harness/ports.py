"""Free loopback ports for the processes a test starts.

Ports come from below the kernel's ephemeral range (outgoing connections take
theirs from there, so a port we hand out is not taken by some client a moment
later), at random so concurrent test runs on one machine rarely pick the same
ones, and never twice from one process.
"""

from __future__ import annotations

import random
import socket
import threading

LOOPBACK = "127.0.0.1"
_LOW, _HIGH = 20_000, 32_000
_handed_out: set[int] = set()
_lock = threading.Lock()


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def consecutive_free_ports(count: int, host: str = LOOPBACK, attempts: int = 500) -> int:
    """First of ``count`` consecutive free ports (``serve --workers N`` uses PORT..PORT+N-1)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    with _lock:
        for _ in range(attempts):
            first = random.randrange(_LOW, _HIGH - count)
            block = range(first, first + count)
            if any(port in _handed_out for port in block):
                continue
            if all(_bindable(host, port) for port in block):
                _handed_out.update(block)
                return first
    raise RuntimeError(f"no {count} consecutive free ports on {host} in {_LOW}-{_HIGH}")


def free_port(host: str = LOOPBACK) -> int:
    return consecutive_free_ports(1, host)


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports, not necessarily consecutive."""
    return [free_port(host) for _ in range(count)]
