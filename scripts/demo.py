"""The local demo: sample application + abuse-sidecar + real Envoy, then traffic.

Run it with ``./scripts/demo`` (which prepares ``.venv`` first). It starts the
echoing sample application, ``abuse-sidecar serve`` with the example policies in
``sidecar/demo/policies/`` (in-process store, no Redis), and Envoy configured by
``sidecar.envoy_config``; sends a scripted mix of normal and abusive requests
through Envoy; prints what happened to each; and stops everything.
``--keep-running`` leaves the stack up afterwards for your own curl requests.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository importable (tests.harness is not installed).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.harness.stack import Stack

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "sidecar" / "demo" / "policies"

_COLOUR = sys.stdout.isatty() and "NO_COLOR" not in os.environ
BOLD, DIM, GREEN, RED, YELLOW, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m") if _COLOUR else ("",) * 6
)


@dataclass(frozen=True, slots=True)
class Call:
    story: str
    """Why this request is in the demo, shown above its group."""
    method: str
    path: str
    expect: tuple[int, ...] = (200,)
    """The status of each repetition; a different answer fails the demo."""
    host: str = "shop.localhost"
    client: str = "198.51.100.10"
    """Sent as X-Forwarded-For, as a load balancer in front of Envoy would."""
    headers: dict[str, str] = field(default_factory=dict)


SCRIPT = (
    Call("a shopper browses", "GET", "/products"),
    Call(
        "alice calls the API with her key (plan gold)",
        "GET",
        "/orders",
        client="198.51.100.11",
        headers={"x-api-key": "alice-demo-key"},
    ),
    Call(
        "bob's free plan allows 2 order calls a minute",
        "GET",
        "/orders",
        (200, 200, 429),
        client="198.51.100.12",
        headers={"x-api-key": "bob-demo-key"},
    ),
    Call(
        "someone guesses an API key",
        "GET",
        "/orders",
        (401,),
        client="198.51.100.13",
        headers={"x-api-key": "letmein"},
    ),
    Call(
        "a password-guessing bot: 3 logins a minute per IP",
        "POST",
        "/login",
        (200, 200, 200, 429),
        client="203.0.113.50",
    ),
    Call("a scanner probes for secrets: a honeypot", "GET", "/.env", (403,), client="203.0.113.66"),
    Call("...and is now blocked on every path", "GET", "/products", (403,), client="203.0.113.66"),
    Call("other clients are not affected", "GET", "/products"),
    Call(
        "beta.localhost runs its policy in shadow mode: reported, never denied",
        "GET",
        "/search",
        (200, 200),
        host="beta.localhost",
        client="203.0.113.77",
    ),
    Call("", "GET", "/.env", host="beta.localhost", client="203.0.113.77"),
    Call("a host no policy is bound to", "GET", "/", host="static.localhost"),
)


def _progress(step: int, total: int, text: str) -> None:
    print(f"{BOLD}[{step}/{total}]{RESET} {text}", flush=True)


def _upstream_view(response: httpx.Response) -> str:
    """The x-abuse-* headers the application received (from its JSON echo)."""
    try:
        headers = response.json()["headers"]
    except (ValueError, KeyError, TypeError):
        return ""
    names = ("policy", "subject", "plan", "shadow")
    seen = [f"{n}={headers[f'x-abuse-{n}']}" for n in names if f"x-abuse-{n}" in headers]
    return " ".join(seen)


def _row(number: int, call: Call, response: httpx.Response, expected: int) -> str:
    status = response.status_code
    colour = GREEN if status < 400 else (YELLOW if status == 429 else RED)
    reason = response.headers.get("x-abuse-reason", "")
    retry = response.headers.get("retry-after")
    if retry:
        reason += f" (retry after {retry}s)"
    request = f"{call.method} {call.host}{call.path}"
    upstream = _upstream_view(response) if status < 400 else ""
    surprise = "" if status == expected else f"  {RED}<- expected {expected}{RESET}"
    return (
        f"{number:>3}  {call.client:<15} {request:<30} {colour}{status:>3}{RESET}  "
        f"{reason:<32} {DIM}{upstream}{RESET}{surprise}"
    )


@dataclass
class Tally:
    allowed: int = 0
    denied: int = 0
    unexpected: int = 0


def send_traffic(base_url: str) -> Tally:
    """Send ``SCRIPT`` through Envoy and print a row per request."""
    print(
        f"\n{BOLD}{'#':>3}  {'client':<15} {'request':<30} {'st':>3}  {'x-abuse-reason':<32} "
        f"application received{RESET}"
    )
    tally = Tally()
    number = 0
    with httpx.Client(base_url=base_url, timeout=5) as client:
        for call in SCRIPT:
            if call.story:
                print(f"     {DIM}-- {call.story}{RESET}")
            for expected in call.expect:
                number += 1
                headers = {"host": call.host, "x-forwarded-for": call.client, **call.headers}
                response = client.request(call.method, call.path, headers=headers)
                print(_row(number, call, response, expected), flush=True)
                if response.status_code < 400:
                    tally.allowed += 1
                else:
                    tally.denied += 1
                tally.unexpected += response.status_code != expected
    return tally


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-running", action="store_true", help="leave the stack up until Ctrl-C"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="abuse-sidecar-demo-") as tmp:
        stack = Stack(Path(tmp) / "logs")
        ok = False
        try:
            _progress(1, 4, "sample application (echoes what reaches it)")
            app = stack.upstream()
            _progress(
                2,
                4,
                f"abuse-sidecar serve --policies {POLICIES.relative_to(REPO)} (in-process store)",
            )
            sidecar = stack.sidecar(policies=[POLICIES], cwd=REPO)
            _progress(3, 4, "Envoy with ext_authz -> abuse-sidecar, failure mode closed")
            envoy = stack.envoy(sidecar, app)
            envoy.wait_for_healthy_endpoints()
            _progress(4, 4, f"traffic through Envoy at {envoy.base_url}")
            tally = send_traffic(envoy.base_url)
            print(
                f"\n{tally.allowed} allowed, {tally.denied} denied "
                f"in {time.monotonic() - started:.1f} s. "
                "Policies: sidecar/demo/policies/; decisions also at "
                f"{sidecar.admin_url}/metrics"
            )
            ok = tally.unexpected == 0
            if not ok:
                print(f"{RED}{tally.unexpected} answer(s) differ from the demo's script{RESET}")
            if args.keep_running:
                print(
                    "\nStill running. Try: curl -H 'host: shop.localhost' "
                    f"{envoy.base_url}/wp-login.php\nCtrl-C stops everything."
                )
                _wait_for_interrupt()
        finally:
            try:
                if not ok:
                    print(stack.describe(), file=sys.stderr)
                print("stopping Envoy, abuse-sidecar and the application ...", flush=True)
            finally:
                stack.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
