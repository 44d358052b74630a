"""The Kubernetes source and status writer, with the official client, against KubeApiServer.

Each "replica" is what one ``serve --kubernetes`` process runs: a policy registry, a Secret key
table, a ``KubernetesSource`` (list + watch of AbusePolicies, Services and Secrets) and, with
status on, a ``StatusWriter`` competing for one Lease. The API server is the in-test one that
speaks the real list/watch protocol (tests/k8s_apiserver.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sidecar.compiled.resources import Resources
from sidecar.compiled.snapshot import PolicyRegistry, PolicySnapshot, PolicyState
from sidecar.identity.api_keys import ApiKeyIndex, SecretKeyTable, digest_of
from sidecar.identity.errors import UnknownApiKey
from sidecar.sources.kubernetes import (
    API_KEY_LABEL,
    POLICY_ANNOTATION,
    KubernetesSource,
    PolicyObject,
    Reflector,
    SecretKind,
    WatchTiming,
)
from sidecar.sources.status import (
    LeaseSettings,
    StatusWriter,
    already_says,
    desired_status,
    lease_name,
)
from tests.k8s_apiserver import KubeApiServer, load_crd

CRD = (
    Path(__file__).resolve().parents[2] / "charts" / "abuse-sidecar" / "crds" / "abusepolicies.yaml"
)
FAST = WatchTiming(watch_seconds=30, backoff_initial=0.05, backoff_max=0.3)
Json = dict[str, Any]


def policy(name: str, namespace: str = "shop", **spec: Any) -> Json:
    return {
        "apiVersion": "abuse.sidecar.dev/v1alpha1",
        "kind": "AbusePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": [f"{name}.example.com"], **spec},
    }


def service(name: str, namespace: str = "shop", policy_name: str | None = None) -> Json:
    meta: Json = {"name": name, "namespace": namespace}
    if policy_name is not None:
        meta["annotations"] = {POLICY_ANNOTATION: policy_name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"ports": [{"port": 80}]},
    }


def api_key_secret(
    name: str, key: str, *, subject: str | None = None, plan: str | None = None
) -> Json:
    annotations = {}
    if subject:
        annotations["abuse.sidecar.dev/subject"] = subject
    if plan:
        annotations["abuse.sidecar.dev/plan"] = plan
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {API_KEY_LABEL: "true"},
            "annotations": annotations,
        },
        "stringData": {"api_key": key},
    }


async def until(check: Callable[[], Any], timeout: float = 8.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def watching(api: KubeApiServer, plural: str) -> None:
    """Wait for a watch of ``plural`` without blocking the loop the watcher runs on."""
    await asyncio.to_thread(api.wait_for_watches, plural)


@dataclass
class Replica:
    name: str
    user: str
    registry: PolicyRegistry
    table: SecretKeyTable
    source: KubernetesSource
    writer: StatusWriter | None
    snapshots: list[PolicySnapshot] = field(default_factory=list)

    def serving(self) -> dict[str, int]:
        """Policy id → generation of the version serving now."""
        return {pid: p.generation for pid, p in self.registry.current.index.by_id.items()}

    def state(self, pid: str) -> PolicyState:
        return next(s for s in self.registry.current.states if s.id == pid)

    def reflector(self, plural: str) -> Reflector:
        return next(r for r in self.source.reflectors if r.kind.plural == plural)

    @property
    def leads(self) -> bool:
        return self.writer is not None and self.writer.is_leader


StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(load_crd(CRD), bookmark_lead=0.3) as server:
        yield server
        assert not server.internal_errors


@pytest.fixture
async def start_replica(api: KubeApiServer, tmp_path: Path) -> AsyncIterator[StartReplica]:
    started: list[Replica] = []

    async def start(
        name: str = "pod-a",
        *,
        namespaces: tuple[str, ...] = ("shop",),
        status: bool = True,
        lease_seconds: int = 2,
    ) -> Replica:
        token = api.service_account_token("shop", name)
        kubeconfig = api.write_kubeconfig(tmp_path / f"{name}.kubeconfig", token=token)
        resources = Resources()
        resources.secret_keys = SecretKeyTable()
        registry = PolicyRegistry(resources)
        source = KubernetesSource(
            registry, resources.secret_keys, namespaces, kubeconfig=str(kubeconfig), timing=FAST
        )
        replica = Replica(
            name,
            f"system:serviceaccount:shop:{name}",
            registry,
            resources.secret_keys,
            source,
            None,
        )
        registry.subscribe(replica.snapshots.append)
        await source.start()
        if status:
            lease = LeaseSettings(
                namespace="shop",
                name=lease_name(namespaces),
                identity=name,
                duration_seconds=lease_seconds,
                renew_deadline=lease_seconds * 0.6,
                retry_period=0.1,
            )
            writer = StatusWriter(source, registry, lease, retry_initial=0.05, retry_max=0.3)
            await writer.start()
            replica.writer = writer
        started.append(replica)
        assert await source.wait_synced(10), source.unready_reasons()
        return replica

    yield start
    for replica in reversed(started):
        if replica.writer is not None:
            await replica.writer.aclose()
        await replica.source.aclose()


def status_patches(api: KubeApiServer) -> list[Any]:
    return [r for r in api.requests_to("abusepolicies", "PATCH") if r.path.endswith("/status")]


def watch_requests(api: KubeApiServer, plural: str) -> list[Any]:
    return [r for r in api.requests_to(plural, "GET") if r.watch]


def ready_condition(obj: Json | None) -> Json | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), None)


# ------------------------------------------------------------------------------------------
# Policies: list, adds, updates, deletes
# ------------------------------------------------------------------------------------------


async def test_lists_then_follows_adds_updates_and_deletes(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    api.create(policy("listed"))
    api.create(policy("elsewhere", namespace="default"))  # not a watched namespace
    replica = await start_replica(status=False)
    assert replica.serving() == {"shop/listed": 1}
    assert replica.state("shop/listed").source == "kubernetes:shop/listed"

    api.create(policy("added", honeypots={"paths": ["/trap"]}))
    await until(lambda: "shop/added" in replica.serving(), what="ADDED applied")

    api.update(policy("listed", mode="shadow"))
    await until(lambda: replica.serving().get("shop/listed") == 2, what="MODIFIED applied")
    assert replica.registry.current.index.by_id["shop/listed"].shadow

    api.delete("abusepolicies", "shop", "added")
    await until(lambda: "shop/added" not in replica.serving(), what="DELETED applied")
    assert [s.id for s in replica.registry.current.states] == ["shop/listed"]
    assert replica.reflector("abusepolicies").lists == 1  # no relist was needed


async def test_all_namespaces_uses_the_cluster_wide_endpoints(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    api.create(policy("one"))
    api.create(policy("two", namespace="default"))
    replica = await start_replica(namespaces=(), status=False)
    assert set(replica.serving()) == {"shop/one", "default/two"}
    lists = [r.path for r in api.requests_to("abusepolicies", "GET") if not r.watch]
    assert lists == ["/apis/abuse.sidecar.dev/v1alpha1/abusepolicies"]
    assert {r.path for r in api.requests_to("services")} == {"/api/v1/services"}
    assert {r.query["labelSelector"] for r in api.requests_to("secrets")} == {
        "abuse.sidecar.dev/api-key=true"
    }


async def test_not_synced_until_every_kind_is_listed(
    api: KubeApiServer, start_replica: StartReplica, tmp_path: Path
) -> None:
    # Secrets cannot be listed (RBAC missing, say): policies and Services alone are not enough.
    api.inject(403, path="/secrets$", method="GET", times=-1, message="secrets is forbidden")
    resources = Resources()
    resources.secret_keys = SecretKeyTable()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    source = KubernetesSource(
        PolicyRegistry(resources),
        resources.secret_keys,
        ("shop",),
        kubeconfig=str(kubeconfig),
        timing=FAST,
    )
    await source.start()
    try:
        assert not await source.wait_synced(0.5)
        reasons = source.unready_reasons()
        assert len(reasons) == 1
        assert "secrets in shop not listed yet" in reasons[0]
        assert "403 Forbidden: secrets is forbidden" in reasons[0]
        api.clear_faults()
        assert await source.wait_synced(5)
        assert source.unready_reasons() == []
    finally:
        await source.aclose()


# ------------------------------------------------------------------------------------------
# Invalid versions and status
# ------------------------------------------------------------------------------------------


async def test_invalid_update_keeps_the_good_version_and_reports_the_field_path(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    limits = [{"name": "per-ip", "by": ["ip"], "limit": 5, "period": "1m"}]
    api.create(policy("reviews", rateLimits=limits))
    replica = await start_replica()
    await until(lambda: replica.leads, what="leadership")
    await until(
        lambda: (
            (ready_condition(api.get("abusepolicies", "shop", "reviews")) or {}).get("reason")
            == "Compiled"
        ),
        what="Ready=True",
    )
    first = ready_condition(api.get("abusepolicies", "shop", "reviews"))
    assert first is not None
    assert first["status"] == "True"
    assert first["observedGeneration"] == 1

    # A spec the CRD schema would refuse, stored anyway (an older CRD, a schema gap).
    bad = [{**limits[0], "period": "soon"}]
    api.update(policy("reviews", rateLimits=bad), validate=False)
    await until(
        lambda: (
            (ready_condition(api.get("abusepolicies", "shop", "reviews")) or {}).get("reason")
            == "Invalid"
        ),
        what="Ready=False",
    )
    stored = api.get("abusepolicies", "shop", "reviews")
    assert stored is not None
    condition = ready_condition(stored)
    assert condition is not None
    assert condition["status"] == "False"
    assert condition["message"].startswith("spec.rateLimits[0].period: ")
    assert condition["observedGeneration"] == 2
    assert stored["status"]["observedGeneration"] == 2
    # Generation 1 keeps serving.
    assert replica.serving() == {"shop/reviews": 1}
    assert replica.state("shop/reviews").state == "invalid"

    # Fixed: Ready again, and lastTransitionTime moved because the status did.
    await asyncio.sleep(1.1)  # lastTransitionTime has second precision
    api.update(policy("reviews", rateLimits=[{**limits[0], "period": "2m"}]))
    await until(lambda: replica.serving() == {"shop/reviews": 3}, what="fixed version serving")
    await until(
        lambda: (
            (ready_condition(api.get("abusepolicies", "shop", "reviews")) or {}).get(
                "observedGeneration"
            )
            == 3
        ),
        what="status of generation 3",
    )
    fixed = ready_condition(api.get("abusepolicies", "shop", "reviews"))
    assert fixed is not None
    assert (fixed["status"], fixed["reason"], fixed["message"]) == ("True", "Compiled", "")
    assert fixed["lastTransitionTime"] > condition["lastTransitionTime"]
    # Every status write went to /status as a merge patch.
    assert {(r.content_type, r.code) for r in status_patches(api)} == {
        ("application/merge-patch+json", 200)
    }


async def test_compile_errors_are_reported_like_schema_errors(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    # Valid for the CRD schema, refused by the compiler: two rate limits with one name.
    twice = [
        {"name": "same", "by": ["ip"], "limit": 5, "period": "1m"},
        {"name": "same", "by": ["ip"], "limit": 9, "period": "1m"},
    ]
    api.create(policy("dupes", rateLimits=twice))
    replica = await start_replica()
    await until(lambda: ready_condition(api.get("abusepolicies", "shop", "dupes")), what="status")
    condition = ready_condition(api.get("abusepolicies", "shop", "dupes"))
    assert condition is not None
    assert condition["reason"] == "Invalid"
    assert condition["message"].startswith("spec.rateLimits")
    assert replica.serving() == {}


async def test_lasttransitiontime_only_moves_when_the_status_does(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    api.create(policy("steady"))
    await start_replica()
    await until(lambda: ready_condition(api.get("abusepolicies", "shop", "steady")), what="status")
    before = ready_condition(api.get("abusepolicies", "shop", "steady"))
    assert before is not None
    await asyncio.sleep(1.1)
    api.update(policy("steady", mode="shadow"))
    await until(
        lambda: (
            (ready_condition(api.get("abusepolicies", "shop", "steady")) or {}).get(
                "observedGeneration"
            )
            == 2
        ),
        what="status of generation 2",
    )
    after = ready_condition(api.get("abusepolicies", "shop", "steady"))
    assert after is not None
    assert after["lastTransitionTime"] == before["lastTransitionTime"]


# ------------------------------------------------------------------------------------------
# Connections: drops, 410, bookmarks
# ------------------------------------------------------------------------------------------


async def test_dropped_watch_resumes_from_the_last_resource_version(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    replica = await start_replica(status=False)
    await watching(api, "abusepolicies")
    api.create(policy("before"))
    await until(lambda: "shop/before" in replica.serving(), what="first ADDED")
    last_seen = replica.reflector("abusepolicies").resource_version
    stored = api.get("abusepolicies", "shop", "before")
    assert stored is not None
    assert last_seen == stored["metadata"]["resourceVersion"]

    assert api.drop_watches(plural="abusepolicies") == 1  # TCP cut mid-stream
    api.create(policy("during"))  # written while nobody watches
    await until(lambda: "shop/during" in replica.serving(), what="ADDED after the drop")

    # Watch requests are logged when they open: the one cut, then the resume.
    cut, resumed = watch_requests(api, "abusepolicies")
    assert cut.query["resourceVersion"] != last_seen  # it started from the list
    assert resumed.query["resourceVersion"] == last_seen
    assert replica.reflector("abusepolicies").lists == 1  # resumed, not relisted


async def test_410_gone_relists_and_applies_the_list_as_one_change(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    for name in ("keep", "change", "remove"):
        api.create(policy(name))
    replica = await start_replica(status=False)
    await watching(api, "abusepolicies")
    assert replica.serving() == {"shop/keep": 1, "shop/change": 1, "shop/remove": 1}
    before = dict(replica.serving())
    old_rv = replica.reflector("abusepolicies").resource_version

    # The watch cannot come back (500s) while the cluster changes and history is compacted.
    api.inject(500, path="/abusepolicies$", method="GET", watch=True, times=-1)
    api.drop_watches(plural="abusepolicies")
    api.update(policy("change", mode="shadow"))
    api.delete("abusepolicies", "shop", "remove")
    api.create(policy("new"))
    api.compact()
    published = len(replica.snapshots)
    api.clear_faults()

    after = {"shop/keep": 1, "shop/change": 2, "shop/new": 1}
    await until(lambda: replica.serving() == after, what="relist applied")
    reflector = replica.reflector("abusepolicies")
    assert reflector.lists == 2
    # The resumed watch (200 + ERROR 410 for the compacted RV), then a watch from the new list.
    relist_rv = reflector.resource_version
    await watching(api, "abusepolicies")
    answered = [r for r in watch_requests(api, "abusepolicies") if r.code == 200]
    assert [r.query["resourceVersion"] for r in answered][-2:] == [old_rv, relist_rv]
    # One snapshot for the whole relist: no request saw the new policy without the deletion.
    relisted = [
        {p.id: p.generation for p in s.index.by_id.values()} for s in replica.snapshots[published:]
    ]
    assert relisted == [after]
    assert before != after
    assert sorted(s.id for s in replica.registry.current.states) == sorted(after)


async def test_bookmarks_advance_the_resource_version(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    replica = await start_replica(status=False)
    await watching(api, "abusepolicies")
    reflector = replica.reflector("abusepolicies")
    listed_rv = reflector.resource_version
    await watching(api, "services")
    await watching(api, "secrets")
    api.create(service("unrelated"))  # moves the global revision, no AbusePolicy event
    assert api.send_bookmarks() == 3  # every watch asked for bookmarks
    await until(lambda: reflector.bookmarks >= 1, what="a BOOKMARK")
    assert reflector.resource_version == str(api.revision) != listed_rv

    bookmarked = reflector.resource_version
    api.drop_watches(plural="abusepolicies", clean=True)  # the server ends the watch
    await until(lambda: len(watch_requests(api, "abusepolicies")) == 2, what="a new watch")
    first, second = watch_requests(api, "abusepolicies")
    assert first.query["resourceVersion"] == listed_rv
    assert second.query["resourceVersion"] == bookmarked
    assert all(
        r.query.get("allowWatchBookmarks") == "true" for r in watch_requests(api, "abusepolicies")
    )


# ------------------------------------------------------------------------------------------
# Services and Secrets
# ------------------------------------------------------------------------------------------


async def test_service_annotation_added_changed_and_removed_changes_the_binding(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    api.create(policy("reviews-policy", hosts=[]))
    api.create(policy("other-policy", hosts=[]))
    api.create(service("reviews"))
    replica = await start_replica(status=False)
    names = ["reviews", "reviews.shop", "reviews.shop.svc", "reviews.shop.svc.cluster.local"]

    def bound() -> dict[str, str | None]:
        index = replica.registry.current.index
        return {n: (p.id if (p := index.bind(n, {})) else None) for n in names}

    assert set(bound().values()) == {None}

    def annotate(value: str | None) -> None:
        current = api.get("services", "shop", "reviews")
        assert current is not None
        current["metadata"]["annotations"] = {} if value is None else {POLICY_ANNOTATION: value}
        api.update(current)

    annotate("reviews-policy")
    await until(lambda: set(bound().values()) == {"shop/reviews-policy"}, what="bound")
    annotate("other-policy")
    await until(lambda: set(bound().values()) == {"shop/other-policy"}, what="rebound")
    annotate("Not A Name")
    await until(lambda: set(bound().values()) == {None}, what="invalid value unbinds")
    assert "Service shop/reviews" in replica.source.describe()["errors"]
    annotate(None)
    await until(lambda: not replica.source.describe()["errors"], what="error cleared")
    assert set(bound().values()) == {None}

    annotate("reviews-policy")
    await until(lambda: set(bound().values()) == {"shop/reviews-policy"}, what="bound again")
    api.delete("services", "shop", "reviews")
    await until(lambda: set(bound().values()) == {None}, what="deleted Service unbinds")


async def test_secret_rotation_changes_the_accepted_key(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    api.create(api_key_secret("key-alice", "first-key", subject="alice", plan="gold"))
    api.create(
        {
            **api_key_secret("not-labelled", "other-key"),
            "metadata": {"name": "not-labelled", "namespace": "shop"},
        }
    )
    replica = await start_replica(status=False)
    accepted = ApiKeyIndex(
        [], namespace="shop", selector={API_KEY_LABEL: "true"}, table=replica.table
    )

    who = accepted.match("first-key")
    assert (who.id, who.subject, who.plan) == ("shop/key-alice", "alice", "gold")
    with pytest.raises(UnknownApiKey):
        accepted.match("other-key")

    secret = api.get("secrets", "shop", "key-alice")
    assert secret is not None
    api.update({**secret, "data": {}, "stringData": {"api_key": "second-key"}})
    await until(lambda: replica.table.lookup(digest_of("second-key")), what="rotated key")
    assert replica.table.lookup(digest_of("first-key")) == ()
    with pytest.raises(UnknownApiKey):
        accepted.match("first-key")
    assert accepted.match("second-key").subject == "alice"

    # Only the digest is kept: nothing the source holds or shows contains the key.
    assert "second-key" not in json.dumps(replica.source.describe())
    assert "second-key" not in repr(replica.source.secrets.keys)

    # A broken rotation stops the old key too.
    secret = api.get("secrets", "shop", "key-alice")
    assert secret is not None
    api.update({**secret, "data": {"api_key": "%%% not base64"}})
    await until(lambda: replica.table.lookup(digest_of("second-key")) == (), what="key dropped")
    assert "Secret shop/key-alice" in replica.source.describe()["errors"]

    # Losing the label is leaving the selection: the key goes.
    api.update(api_key_secret("key-alice", "third-key"))
    await until(lambda: replica.table.lookup(digest_of("third-key")), what="third key")
    assert accepted.match("third-key").subject == "key-alice"  # no annotation: the Secret's name
    secret = api.get("secrets", "shop", "key-alice")
    assert secret is not None
    api.update({**secret, "metadata": {**secret["metadata"], "labels": {}}})
    await until(lambda: len(replica.table) == 0, what="unlabelled Secret forgotten")


# ------------------------------------------------------------------------------------------
# Leader election
# ------------------------------------------------------------------------------------------


async def test_status_is_written_once_per_generation_by_the_leader_only(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    a = await start_replica("pod-a")
    b = await start_replica("pod-b")
    await until(lambda: a.leads or b.leads, what="a leader")
    await asyncio.sleep(0.3)
    assert a.leads != b.leads
    leader = a if a.leads else b

    api.create(policy("p1"))
    await until(lambda: ready_condition(api.get("abusepolicies", "shop", "p1")), what="status")
    api.update(policy("p1", mode="shadow"))
    await until(
        lambda: (
            (ready_condition(api.get("abusepolicies", "shop", "p1")) or {}).get(
                "observedGeneration"
            )
            == 2
        ),
        what="status of generation 2",
    )
    await asyncio.sleep(0.5)  # room for any duplicate write to show up
    patches = status_patches(api)
    assert [r.body["status"]["observedGeneration"] for r in patches] == [1, 2]
    assert {r.user for r in patches} == {leader.user}
    lease = api.get("leases", "shop", lease_name(("shop",)))
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == leader.name


async def test_leadership_moves_when_the_leader_stops_renewing(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    a = await start_replica("pod-a")
    await until(lambda: a.leads, what="pod-a leads")
    b = await start_replica("pod-b")
    api.create(policy("p1"))
    await until(lambda: ready_condition(api.get("abusepolicies", "shop", "p1")), what="status")
    lease_before = api.get("leases", "shop", lease_name(("shop",)))
    assert lease_before is not None

    # pod-a loses the API server (a partition): it cannot renew.
    assert a.source.connection is not None
    await a.source.connection.aclose()
    started = time.monotonic()
    await until(lambda: b.leads, timeout=10, what="pod-b takes over")
    took = time.monotonic() - started
    assert (
        took >= 1.0
    )  # not before the Lease's duration (2 s) of silence, minus pod-a's last renewal
    await until(lambda: not a.leads, what="pod-a steps down")
    lease = api.get("leases", "shop", lease_name(("shop",)))
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "pod-b"
    assert lease["spec"]["leaseTransitions"] == lease_before["spec"]["leaseTransitions"] + 1

    # The new leader writes the next generation's status.
    api.update(policy("p1", mode="shadow"))
    await until(
        lambda: (
            (ready_condition(api.get("abusepolicies", "shop", "p1")) or {}).get(
                "observedGeneration"
            )
            == 2
        ),
        what="status of generation 2",
    )
    assert [r.user for r in status_patches(api)] == [a.user, b.user]


async def test_a_stopping_leader_hands_the_lease_over_at_once(
    api: KubeApiServer, start_replica: StartReplica
) -> None:
    a = await start_replica("pod-a", lease_seconds=30)
    await until(lambda: a.leads, what="pod-a leads")
    b = await start_replica("pod-b", lease_seconds=30)
    await asyncio.sleep(0.3)
    assert not b.leads
    assert a.writer is not None
    await a.writer.aclose()  # SIGTERM: releases the Lease
    await until(lambda: b.leads, timeout=3, what="pod-b leads well before 30 s")


# ------------------------------------------------------------------------------------------
# Least privilege: the chart's RBAC is enough
# ------------------------------------------------------------------------------------------

HELM = Path(__file__).resolve().parents[2] / "tools" / "helm"


def chart_rbac(tmp_path: Path, release_namespace: str, watch: list[str]) -> list[Json]:
    """The chart's Roles, ClusterRoles and bindings for ``watchNamespaces=watch``."""
    if not HELM.exists():
        pytest.skip("tools/helm missing (scripts/fetch-helm.sh fetches it)")
    home = tmp_path / "helm"
    rendered = subprocess.run(
        [
            str(HELM),
            "template",
            "abuse-sidecar",
            str(CRD.parents[1]),
            "--namespace",
            release_namespace,
            "--set-json",
            f"watchNamespaces={json.dumps(watch)}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        },
    ).stdout
    kinds = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    return [d for d in yaml.safe_load_all(rendered) if isinstance(d, dict) and d["kind"] in kinds]


@pytest.mark.parametrize("watch", [["shop"], []], ids=["namespaced", "all-namespaces"])
async def test_runs_with_nothing_more_than_the_chart_grants(
    tmp_path: Path, watch: list[str]
) -> None:
    rbac = chart_rbac(tmp_path, "abuse-system", watch)
    namespaces = ("default", "shop", "abuse-system")
    with KubeApiServer(load_crd(CRD), rbac=True, namespaces=namespaces) as api:
        for doc in rbac:
            api.create(doc)
        api.create(policy("p1"))
        api.create(service("reviews", policy_name="p1"))
        api.create(api_key_secret("key-alice", "k"))
        token = api.service_account_token("abuse-system", "abuse-sidecar")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token=token)
        resources = Resources()
        resources.secret_keys = SecretKeyTable()
        registry = PolicyRegistry(resources)
        source = KubernetesSource(
            registry, resources.secret_keys, watch, kubeconfig=str(kubeconfig), timing=FAST
        )
        lease = LeaseSettings("abuse-system", lease_name(watch), "pod-a", 2, 1.2, 0.1)
        writer = StatusWriter(source, registry, lease, retry_initial=0.05, retry_max=0.3)
        await source.start()
        await writer.start()
        try:
            assert await source.wait_synced(10), source.unready_reasons()
            await until(lambda: writer.is_leader, what="leadership")
            await until(
                lambda: ready_condition(api.get("abusepolicies", "shop", "p1")), what="status"
            )
            await asyncio.sleep(0.3)
            # Renewals too (replace on the Lease) stay within the Role.
            assert writer.elector is not None
            assert writer.elector.last_error is None
        finally:
            await writer.aclose()
            await source.aclose()
        assert "shop/p1" in registry.current.index.by_id
        assert len(resources.secret_keys) == 1
        refused = [(r.method, r.path, r.query) for r in api.requests if r.code == 403]
        assert refused == []
        assert not api.internal_errors


# ------------------------------------------------------------------------------------------
# Properties of what is parsed from the cluster and what is written back
# ------------------------------------------------------------------------------------------

_conditions = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["Ready", "Degraded", "example.org/Synced"]),
            "status": st.sampled_from(["True", "False", "Unknown"]),
            "reason": st.sampled_from(["Compiled", "Invalid", "Other"]),
            "message": st.text(max_size=20),
            "lastTransitionTime": st.sampled_from(["2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"]),
        }
    ),
    max_size=4,
    unique_by=lambda c: c["type"],
)
_moments = st.datetimes(
    min_value=datetime.datetime(2026, 1, 1), max_value=datetime.datetime(2030, 1, 1)
).map(lambda d: d.replace(tzinfo=datetime.UTC))


def _object(status: Json, generation: int = 1) -> PolicyObject:
    return PolicyObject("shop", "p", "uid-1", generation, "7", status)


@given(
    conditions=_conditions,
    error=st.none() | st.text(min_size=1, max_size=40),
    generation=st.integers(min_value=1, max_value=10**6),
    first=_moments,
    later=_moments,
)
def test_status_is_written_once_and_keeps_what_others_wrote(
    conditions: list[Json],
    error: str | None,
    generation: int,
    first: datetime.datetime,
    later: datetime.datetime,
) -> None:
    before = _object({"conditions": conditions, "observedGeneration": 0}, generation)
    written = desired_status(before, error, first)
    # Once the object carries it, the same verdict later is no write at all.
    assert already_says(written, desired_status(_object(written, generation), error, later))
    # Other controllers' conditions stay, in their order; Ready appears once.
    others = [c for c in conditions if c["type"] != "Ready"]
    assert [c for c in written["conditions"] if c["type"] != "Ready"] == others
    (ready,) = [c for c in written["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == ("False" if error else "True")
    assert ready["reason"] == ("Invalid" if error else "Compiled")
    assert ready["observedGeneration"] == written["observedGeneration"] == generation
    previous = next((c for c in conditions if c["type"] == "Ready"), None)
    if previous is not None and previous["status"] == ready["status"]:
        assert ready["lastTransitionTime"] == previous["lastTransitionTime"]
    else:
        assert ready["lastTransitionTime"] == first.strftime("%Y-%m-%dT%H:%M:%SZ")


@given(
    data=st.none()
    | st.text(max_size=40)
    | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    labelled=st.booleans(),
    subject=st.none() | st.text(max_size=10),
)
def test_any_secret_yields_a_digest_or_a_reason_never_the_key(
    data: str | None, labelled: bool, subject: str | None
) -> None:
    table = SecretKeyTable()
    kind = SecretKind(table)
    obj: Json = {
        "metadata": {
            "name": "k",
            "namespace": "shop",
            "labels": {API_KEY_LABEL: "true"} if labelled else {},
            "annotations": {} if subject is None else {"abuse.sidecar.dev/subject": subject},
        },
        "data": {} if data is None else {"api_key": data},
    }
    kind.apply("ADDED", obj)
    if ("shop", "k") in table.entries():
        assert data is not None
        key = table.entries()[("shop", "k")]
        assert key.digest == hashlib.sha256(base64.b64decode(data)).digest()
        assert key.subject == (subject or "k")
        # The key never shows; a subject that happens to equal it is public on purpose.
        assert data not in repr(key).replace(repr(key.subject), "")
        assert ("shop", "k") not in kind.errors
    else:
        assert not labelled or ("shop", "k") in kind.errors
    kind.apply("DELETED", obj)
    assert len(table) == 0
    assert kind.errors == {}
