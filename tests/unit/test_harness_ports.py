"""Free-port helpers of the test harness."""

from __future__ import annotations

import socket

from tests.harness.ports import LOOPBACK, consecutive_free_ports, free_port, free_ports


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, port))
    return sock


def test_consecutive_block_is_bindable_and_never_handed_out_twice() -> None:
    first = consecutive_free_ports(4)
    second = consecutive_free_ports(4)
    block = set(range(first, first + 4))

    assert block.isdisjoint(range(second, second + 4))
    sockets = [_bind(port) for port in block]  # raises if any is taken
    for sock in sockets:
        sock.close()


def test_single_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    ports = [*free_ports(5), free_port()]

    assert len(set(ports)) == 6
    assert all(20_000 <= port < 32_000 for port in ports)
