"""What ``check.lua`` costs redis-server, next to a plain GET.

Through Envoy the sidecar and redis-server share the machine's cores, so every
microsecond the script spends inside Redis is taken from the throughput of the
whole chain. This sends one command at a time (as Checks arrive through Envoy at
the benchmark's load: about one per socket read) on one connection, and reports
per request:

* redis-server CPU (user + system, from /proc), which includes the socket work;
* ``usec_per_call`` from ``INFO commandstats``: the command's own time.

The plan is ``store_bench.busy_plan`` (an active-block check, three rate limits,
a cohort count), encoded by the sidecar's own codec. ``--script FILE`` measures a
variant of the script with the same KEYS and ARGV, to see what a part of it costs
(e.g. a copy that skips the SETs).

    .venv/bin/python bench/script_cost.py [--requests 20000] [--script variant.lua]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import hiredis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.grpc_load import process_cpu_seconds
from bench.run import redis_info
from bench.store_bench import busy_plan, redis_server
from sidecar.stores.plan_codec import PlanCodec, command
from sidecar.stores.redis import SCRIPT


class Connection:
    def __init__(self, url: str) -> None:
        self.url = url
        host, port = url.removeprefix("redis://").split("/", 1)[0].rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = hiredis.Reader()

    def call(self, request: bytes) -> object:
        self._sock.sendall(request)
        while True:
            reply = self._reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(str(reply))
                return reply
            self._reader.feed(self._sock.recv(65536))


def measure(
    conn: Connection, pid: int, name: str, requests: list[bytes], count: int
) -> tuple[float, float]:
    """(server CPU µs per request, the command's usec_per_call)."""
    for index in range(2000):  # warm-up: keys exist, the script is compiled
        conn.call(requests[index % len(requests)])
    conn.call(command(b"CONFIG", b"RESETSTAT"))
    before = process_cpu_seconds(pid)
    for index in range(count):
        conn.call(requests[index % len(requests)])
    cpu = process_cpu_seconds(pid) - before
    own = redis_info(conn.url, "commandstats")[f"cmdstat_{name}"]["usec_per_call"]
    return cpu / count * 1e6, float(own)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="report the median")
    parser.add_argument("--script", type=Path, action="append", default=[])
    args = parser.parse_args()

    with redis_server() as url:
        conn = Connection(url)
        pid = int(redis_info(url, "server")["process_id"])
        conn.call(command(b"SET", b"bench:plain", b"1"))
        cases: list[tuple[str, str, list[bytes]]] = [
            ("GET", "get", [command(b"GET", b"bench:plain")])
        ]
        scripts = [("check.lua", SCRIPT)] + [(p.name, p.read_bytes()) for p in args.script]
        for script_name, source in scripts:
            sha = conn.call(command(b"SCRIPT", b"LOAD", source))
            assert isinstance(sha, bytes)
            codec = PlanCodec(sha.decode())
            plans = [codec.encode(busy_plan(i).operations, False) for i in range(64)]
            cases.append((f"EVALSHA {script_name}", "evalsha", plans))
        print(
            f"{args.requests} requests, one at a time, median of {args.repeats}, "
            f"redis-server {pid} at {url}"
        )
        print(f"{'command':<32} {'server CPU µs/request':>22} {'usec_per_call':>14}")
        for label, name, requests in cases:
            runs = [measure(conn, pid, name, requests, args.requests) for _ in range(args.repeats)]
            cpu = statistics.median(run[0] for run in runs)
            own = statistics.median(run[1] for run in runs)
            print(f"{label:<32} {cpu:>22.1f} {own:>14.2f}")


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"({time.monotonic() - start:.0f} s)")
