"""Prometheus metrics match the Checks sent (CONTRACT.md section 5), also with
``--workers N``, where every worker writes to the multiprocess directory and the
supervisor's ``/metrics`` aggregates them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.ports import free_port
from tests.harness.processes import wait_for_tcp
from tests.harness.sidecar import SidecarProcess, start_sidecar
from tests.integration.observability_support import (
    API_KEY,
    POLICY_ID,
    WRONG_API_KEY,
    CheckClient,
    check_request,
    status_of,
    write_policy,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples if sample == name]


def _leave_a_previous_run(directory: Path) -> None:
    """Metric files of a process that is gone, as a restarted pod finds in an emptyDir."""
    code = (
        "from prometheus_client import Counter, Gauge\n"
        "Counter('abuse_sidecar_decisions_total', '', ['policy', 'decision', 'reason'])"
        ".labels('old/run', 'deny', 'honeypot').inc(1000)\n"
        "Gauge('abuse_sidecar_policies', '', ['state'], multiprocess_mode='livemostrecent')"
        ".labels('ready').set(42)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert list(directory.glob("*.db"))


def _worker_pids(directory: Path, supervisor: int) -> list[int]:
    pids = {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("counter_*.db")}
    return sorted(pids - {supervisor})


def _gone(pid: int) -> bool:
    """Exited (a zombie until its parent waits for it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


async def _send(
    sidecar: SidecarProcess, worker: int, allowed: int, missing: int, invalid: int
) -> None:
    client = CheckClient(f"127.0.0.1:{sidecar.grpc_port + worker}")
    try:
        for _ in range(allowed):
            assert (
                status_of(await client.check(check_request(headers={"x-api-key": API_KEY}))) == 200
            )
        for _ in range(missing):
            assert status_of(await client.check(check_request())) == 401
        for _ in range(invalid):
            assert (
                status_of(await client.check(check_request(headers={"x-api-key": WRONG_API_KEY})))
                == 401
            )
    finally:
        await client.close()


async def test_worker_metrics_add_up_and_survive_a_dead_worker(
    tmp_path: Path, log_dir: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    _leave_a_previous_run(directory)
    sidecar = await asyncio.to_thread(
        start_sidecar,
        log_dir=log_dir,
        policies=[write_policy(tmp_path)],
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    try:
        await _send(sidecar, 0, allowed=3, missing=2, invalid=0)
        await _send(sidecar, 1, allowed=4, missing=0, invalid=1)
        before = _samples(await asyncio.to_thread(sidecar.metrics))

        decisions = "abuse_sidecar_decisions_total"
        assert _value(before, decisions, policy=POLICY_ID, decision="allow", reason="") == 7
        assert (
            _value(
                before, decisions, policy=POLICY_ID, decision="deny", reason="missing_credentials"
            )
            == 2
        )
        assert (
            _value(
                before, decisions, policy=POLICY_ID, decision="deny", reason="invalid_credentials"
            )
            == 1
        )
        assert all(
            s["policy"] != "old/run" for s in _series(before, decisions)
        )  # the old run is gone
        assert _value(before, "abuse_sidecar_check_duration_seconds_count") == 10
        assert _value(before, "abuse_sidecar_check_duration_seconds_bucket", le="+Inf") == 10
        # Three processes loaded the one policy: one series, not one per pid, not 3 or 42.
        assert sorted(s["state"] for s in _series(before, "abuse_sidecar_policies")) == [
            "invalid",
            "ready",
        ]
        assert _value(before, "abuse_sidecar_policies", state="ready") == 1
        assert _value(before, "abuse_sidecar_policies", state="invalid") == 0

        dead = _worker_pids(directory, sidecar.process.pid)[-1]
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _gone(dead):
                break
            await asyncio.sleep(0.05)
        after = _samples(await asyncio.to_thread(sidecar.metrics))
    finally:
        await asyncio.to_thread(sidecar.stop)

    # What the dead worker counted did happen: counters keep it, its live gauges go.
    for key in (k for k in before if k[0].startswith(decisions)):
        assert after[key] == before[key]
    assert _value(after, "abuse_sidecar_check_duration_seconds_count") == 10
    assert _value(after, "abuse_sidecar_policies", state="ready") == 1
    assert not list(directory.glob(f"gauge_live*_{dead}.db"))
    assert list(directory.glob(f"counter_{dead}.db"))


def _sidecar_with_redis_down(
    tmp_path: Path, log_dir: Path
) -> Generator[SidecarProcess, None, None]:
    sidecar = start_sidecar(
        log_dir=log_dir,
        policies=[write_policy(tmp_path)],
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        wait_ready=False,  # not ready without its store, by design
    )
    try:
        wait_for_tcp("127.0.0.1", sidecar.grpc_port, process=sidecar.process)
        wait_for_tcp("127.0.0.1", sidecar.admin_port, process=sidecar.process)
        yield sidecar
    finally:
        sidecar.stop()


async def test_store_errors_count_each_check_that_found_the_store_down(
    tmp_path: Path, log_dir: Path
) -> None:
    starting = _sidecar_with_redis_down(tmp_path, log_dir)
    sidecar = await asyncio.to_thread(next, starting)
    try:
        # failureMode open (the default): allowed on the process-local fallback store.
        await _send(sidecar, 0, allowed=5, missing=0, invalid=0)
        samples = _samples(await asyncio.to_thread(sidecar.metrics))
    finally:
        await asyncio.to_thread(starting.close)

    assert _series(samples, "abuse_sidecar_store_errors_total") == [{"store": "redis"}]
    assert _value(samples, "abuse_sidecar_store_errors_total", store="redis") == 5
    assert (
        _value(
            samples, "abuse_sidecar_decisions_total", policy=POLICY_ID, decision="allow", reason=""
        )
        == 5
    )


def test_the_grafana_dashboard_queries_only_metrics_we_export() -> None:
    from prometheus_client import REGISTRY

    import sidecar.observability.metrics  # noqa: F401  (declares them on the default registry)

    dashboard = json.loads(
        (Path(__file__).parents[2] / "manifests" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exported = {
        sample
        for family in REGISTRY.collect()
        if family.name.startswith("abuse_sidecar_")
        for sample in (
            family.name,
            f"{family.name}_total",
            f"{family.name}_bucket",
            f"{family.name}_count",
        )
    }
    used = {name for expr in exprs for name in re.findall(r"abuse_sidecar_\w+", expr)}
    assert used <= exported, used - exported
    # The contract's metrics each have a panel.
    for name in (
        "decisions_total",
        "check_duration_seconds",
        "store_errors_total",
        "policies",
        "cohort_members",
    ):
        assert any(f"abuse_sidecar_{name}" in expr for expr in exprs), name
