"""The ``abuse-sidecar`` command (CONTRACT.md section 2).

Exit codes: 0 success / allow, 1 deny (``check``) or invalid (``validate``),
2 usage or policy error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar import __version__
from sidecar.settings import WORKER_ENV, add_serve_arguments, settings_from_args

EXIT_OK, EXIT_DENY, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abuse-sidecar", description="Envoy ext_authz service that stops API abuse."
    )
    parser.add_argument("--version", action="version", version=f"abuse-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_authz gRPC server and the admin HTTP server")
    add_serve_arguments(serve)

    check = sub.add_parser("check", help="evaluate one request offline and explain the decision")
    check.add_argument("--policies", action="append", required=True, metavar="PATH")
    check.add_argument("--geoip", action="append", default=[], metavar="PATH")
    check.add_argument("--method", required=True)
    check.add_argument("--path", required=True)
    check.add_argument("--host", default="")
    check.add_argument("--header", action="append", default=[], metavar="'Name: value'")
    check.add_argument("--ip", default="127.0.0.1", metavar="A.B.C.D")
    check.add_argument("--body", type=Path, default=None, metavar="FILE")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.add_argument("--default-policy", default=None, metavar="NS/NAME")

    validate = sub.add_parser(
        "validate", help="validate policy files; non-zero on any invalid document"
    )
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    sub.add_parser("crd", help="print the AbusePolicy CustomResourceDefinition")

    mmdb = sub.add_parser("mmdb", help="MaxMind database tools")
    mmdb_sub = mmdb.add_subparsers(dest="mmdb_command", required=True)
    build = mmdb_sub.add_parser("build", help="build a category database from CIDR lists")
    build.add_argument("--out", required=True, type=Path, metavar="FILE")
    build.add_argument("--category", action="append", required=True, metavar="NAME=CIDR_LIST_FILE")

    revoke = sub.add_parser("revoke", help="revoke a JWT by its jti in the shared store")
    revoke.add_argument("--redis-url", required=True, metavar="URL")
    revoke.add_argument("--jti", required=True, metavar="ID")
    revoke.add_argument("--ttl", default="24h", metavar="D")

    unblock = sub.add_parser(
        "unblock", help="lift blocks and cohort memberships of an IP or subject"
    )
    unblock.add_argument("--redis-url", required=True, metavar="URL")
    unblock.add_argument("--policy", required=True, metavar="NS/NAME")
    who = unblock.add_mutually_exclusive_group(required=True)
    who.add_argument("--ip", metavar="A")
    who.add_argument("--subject", metavar="S")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        handler = _COMMANDS[args.command]
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"abuse-sidecar serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if (
        settings.workers > 1
        and WORKER_ENV not in os.environ
        and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    ):
        # Before prometheus_client is imported: workers write their metrics here
        # and the supervisor's /metrics aggregates them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="abuse-sidecar-metrics-")
    from sidecar.app import serve
    from sidecar.errors import ConfigurationError
    from sidecar.observability.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    try:
        return serve(settings)
    except (ConfigurationError, OSError) as exc:
        print(f"abuse-sidecar serve: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _validate(args: argparse.Namespace) -> int:
    from sidecar.compiled.compiler import compile_policy
    from sidecar.compiled.resources import Resources
    from sidecar.errors import PolicyError
    from sidecar.model.loader import load_file, policy_files

    problems = 0
    documents = 0
    for path in policy_files(args.paths):
        if not path.exists():
            print(f"{path}: no such file or directory", file=sys.stderr)
            problems += 1
            continue
        for doc in load_file(path):
            documents += 1
            if doc.error is not None:
                print(doc.error, file=sys.stderr)
                problems += 1
                continue
            assert doc.policy is not None
            try:
                compile_policy(doc.policy, str(path), Resources())
            except PolicyError as err:
                print(
                    PolicyError(err.source, doc.index, err.field_path, err.message), file=sys.stderr
                )
                problems += 1
    if documents == 0 and problems == 0:
        print("no policy documents found", file=sys.stderr)
        return EXIT_USAGE
    if problems:
        print(f"{problems} invalid document(s) of {documents}", file=sys.stderr)
        return EXIT_DENY
    print(f"{documents} document(s) valid")
    return EXIT_OK


def _crd(args: argparse.Namespace) -> int:
    from sidecar.model.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from sidecar.errors import ConfigurationError
    from sidecar.offline import OfflineRequest, explain_offline

    headers: dict[str, str] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            print(f"abuse-sidecar check: --header {raw!r} is not 'Name: value'", file=sys.stderr)
            return EXIT_USAGE
        headers[name.strip().lower()] = value.strip()
    body = args.body.read_bytes() if args.body else b""
    request = OfflineRequest(args.method, args.path, args.host, headers, args.ip, body)
    try:
        result = asyncio.run(
            explain_offline(
                [Path(p) for p in args.policies],
                [Path(p) for p in args.geoip],
                request,
                default_policy=args.default_policy,
            )
        )
    except (ValueError, ConfigurationError) as exc:
        print(f"abuse-sidecar check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output == "json":
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_text(result)
    return EXIT_OK if result["decision"] == "allow" else EXIT_DENY


def _print_text(result: dict[str, Any]) -> None:
    head = f"{result['decision'].upper()} {result['status']}"
    if result.get("reason"):
        head += f" {result['reason']} (policy {result['policy']}, rule {result['rule']})"
    else:
        head += f" (policy {result['policy']})"
    if result.get("shadow"):
        head += f" [shadow would deny: {result['shadow']}]"
    print(head)
    for step in result["steps"]:
        details = ", ".join(
            f"{k}={v}" for k, v in step.items() if k not in ("step", "verdict") and v is not None
        )
        print(f"  {step['step']:<14} {step['verdict']:<7} {details}")


def _mmdb(args: argparse.Namespace) -> int:
    from sidecar.iprep.build import build_mmdb, parse_category_args

    try:
        count = build_mmdb(args.out, parse_category_args(args.category))
    except (OSError, ValueError) as exc:
        print(f"abuse-sidecar mmdb build: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.out} with {count} network(s)")
    return EXIT_OK


async def _with_store(url: str, action: Any) -> Any:
    from sidecar.stores.open import open_store

    store = open_store(url)
    try:
        return await action(store)
    finally:
        await store.close()


def _revoke(args: argparse.Namespace) -> int:
    from sidecar.errors import StoreUnavailable
    from sidecar.identity.revocation import validate_jti
    from sidecar.model.durations import parse_duration

    try:
        validate_jti(args.jti)
        ttl = parse_duration(args.ttl)
        asyncio.run(_with_store(args.redis_url, lambda store: store.revoke(args.jti, ttl)))
    except (ValueError, StoreUnavailable) as exc:
        print(f"abuse-sidecar revoke: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"revoked jti {args.jti} for {args.ttl}")
    return EXIT_OK


def _unblock(args: argparse.Namespace) -> int:
    from sidecar.errors import StoreUnavailable

    kind, value = ("ip", args.ip) if args.ip else ("subject", args.subject)
    try:
        removed = asyncio.run(
            _with_store(args.redis_url, lambda store: store.unblock(args.policy, kind, value))
        )
    except (ValueError, StoreUnavailable) as exc:
        print(f"abuse-sidecar unblock: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"removed {removed} block(s)/membership(s) of {kind} {value} on {args.policy}")
    return EXIT_OK


_COMMANDS = {
    "serve": _serve,
    "validate": _validate,
    "crd": _crd,
    "check": _check,
    "mmdb": _mmdb,
    "revoke": _revoke,
    "unblock": _unblock,
}
