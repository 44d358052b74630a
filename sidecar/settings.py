"""Settings of ``serve``: every flag, its environment variable and its default.

Each flag ``--some-flag`` also reads ``ABUSE_SIDECAR_SOME_FLAG`` (CONTRACT.md
section 2). List flags read a comma-separated variable. Nothing else in the
package reads os.environ for configuration.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "ABUSE_SIDECAR_"
# Set by the supervisor for worker processes of ``--workers N``: the worker's index.
WORKER_ENV = ENV_PREFIX + "WORKER_INDEX"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


@dataclass(frozen=True, slots=True)
class Settings:
    policies: tuple[Path, ...] = ()
    """Policy files or directories, reloaded on change."""
    kubernetes: bool = False
    """Watch AbusePolicies, annotated Services and API-key Secrets in the cluster."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (empty: all, which needs cluster-wide RBAC)."""
    redis_url: str | None = None
    """Shared store; without it state is per process and lost on exit."""
    geoip: tuple[Path, ...] = ()
    """MaxMind databases (Anonymous IP, Country/City, ASN, or our own category DBs)."""
    geoip_poll_seconds: float = 10.0
    """How often the ``--geoip`` files are checked for replacement (0: never)."""
    grpc_listen: str = "0.0.0.0:9001"
    admin_listen: str = "0.0.0.0:9090"
    workers: int = 1
    """Worker processes; worker i serves gRPC on the gRPC port + i (list each as an
    Envoy endpoint: Envoy keeps one HTTP/2 connection per endpoint per Envoy worker)."""
    default_policy: str | None = None
    otlp_endpoint: str | None = None
    log_format: str = "json"
    log_level: str = "info"
    smtp_url: str | None = None
    smtp_from: str | None = None
    trace_sampling: float = 1.0
    store_timeout_ms: int = 50
    drain_seconds: float = 5.0
    decision_metadata: str = "auto"
    """``always``: every allowed Check returns its decision as Envoy dynamic metadata;
    ``auto``: denials, shadow denials and policies that count responses only."""
    worker_index: int | None = None

    def grpc_listen_for_worker(self) -> str:
        if self.worker_index is None:
            return self.grpc_listen
        host, _, port = self.grpc_listen.rpartition(":")
        return f"{host}:{int(port) + self.worker_index}"


def _env_list(flag: str) -> list[str]:
    raw = os.environ.get(env_name(flag), "")
    return [item.strip() for item in raw.split(",") if item.strip()]


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(flag), default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        action="append",
        default=None,
        metavar="PATH",
        help="policy file or directory (repeatable; env ABUSE_SIDECAR_POLICIES, comma-separated)",
    )
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        default=None,
        help="watch AbusePolicies, annotated Services and API-key Secrets",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        metavar="NS",
        help="namespace to watch (repeatable; default all)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="redis://, rediss://, redis+sentinel:// or redis+cluster:// (default: in-process store)",
    )
    parser.add_argument(
        "--geoip",
        action="append",
        default=None,
        metavar="PATH",
        help="MaxMind database (repeatable)",
    )
    parser.add_argument(
        "--grpc-listen",
        default=None,
        metavar="HOST:PORT",
        help="gRPC listener (default 0.0.0.0:9001)",
    )
    parser.add_argument(
        "--admin-listen",
        default=None,
        metavar="HOST:PORT",
        help="admin HTTP (default 0.0.0.0:9090)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="worker processes (default 1)"
    )
    parser.add_argument(
        "--default-policy", default=None, metavar="NS/NAME", help="policy for unbound requests"
    )
    parser.add_argument(
        "--otlp-endpoint", default=None, metavar="URL", help="OTLP/gRPC trace endpoint"
    )
    parser.add_argument(
        "--log-format", choices=["json", "text"], default=None, help="log format (default json)"
    )
    parser.add_argument("--smtp-url", default=None, metavar="smtp[s]://[user:pass@]host:port")
    parser.add_argument("--smtp-from", default=None, metavar="ADDR")


def settings_from_args(args: argparse.Namespace) -> Settings:
    def pick_list(value: Sequence[str] | None, flag: str) -> list[str]:
        return list(value) if value else _env_list(flag)

    workers = args.workers if args.workers is not None else int(_env("--workers", "1") or "1")
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    worker_env = os.environ.get(WORKER_ENV)
    kubernetes = bool(args.kubernetes) or (_env("--kubernetes", "") or "").lower() in (
        "1",
        "true",
        "yes",
    )
    return Settings(
        policies=tuple(Path(p) for p in pick_list(args.policies, "--policies")),
        kubernetes=kubernetes,
        namespaces=tuple(pick_list(args.namespace, "--namespace")),
        redis_url=args.redis_url or _env("--redis-url") or None,
        geoip=tuple(Path(p) for p in pick_list(args.geoip, "--geoip")),
        grpc_listen=args.grpc_listen or _env("--grpc-listen", "0.0.0.0:9001") or "0.0.0.0:9001",
        admin_listen=args.admin_listen or _env("--admin-listen", "0.0.0.0:9090") or "0.0.0.0:9090",
        workers=workers,
        default_policy=args.default_policy or _env("--default-policy") or None,
        otlp_endpoint=args.otlp_endpoint or _env("--otlp-endpoint") or None,
        log_format=args.log_format or _env("--log-format", "json") or "json",
        log_level=(_env("--log-level", "info") or "info").lower(),
        smtp_url=args.smtp_url or _env("--smtp-url") or None,
        smtp_from=args.smtp_from or _env("--smtp-from") or None,
        trace_sampling=float(_env("--trace-sampling", "1.0") or "1.0"),
        store_timeout_ms=int(_env("--store-timeout-ms", "50") or "50"),
        drain_seconds=float(_env("--drain-seconds", "5") or "5"),
        decision_metadata=_decision_metadata(_env("--decision-metadata", "auto") or "auto"),
        geoip_poll_seconds=float(_env("--geoip-poll-seconds", "10") or "10"),
        worker_index=int(worker_env) if worker_env else None,
    )


def _decision_metadata(value: str) -> str:
    mode = value.strip().lower()
    if mode not in ("auto", "always"):
        raise ValueError(f"{env_name('--decision-metadata')} must be auto or always, not {value!r}")
    return mode
