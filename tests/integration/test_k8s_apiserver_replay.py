# The official client's watch, config and leaderelection modules carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Keep the in-test API server honest.

Part 1 replays every exchange recorded on a real kube-apiserver v1.36.2
(shared/testdata/k8s/*.jsonl, in the recorded order a→i against one server, as recorded)
and compares what the fake answers: status codes, Status reasons and messages, headers that
matter, object shapes, watch event sequences and resourceVersion *relations* (a map from the
recorded RVs to the fake's must stay consistent; values themselves are never compared).
Time is compressed by ``SCALE`` (watch timeouts and the gaps between requests).

Part 2 drives the fake with the official ``kubernetes`` client (``CustomObjectsApi``,
``CoreV1Api``, ``kubernetes.watch.Watch``, ``LeaseLock``), the way the product's watcher will.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

# tests/ is not a package; the server module sits beside the test folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from k8s_apiserver import (
    ADMIN_TOKEN,
    INITIAL_EVENTS_END,
    KubeApiServer,
    load_crd,
)
from shared_data import shared_testdata

TESTDATA = shared_testdata("k8s")
SCALE = 0.1
GROUP, VERSION, PLURAL = "abuse.sidecar.dev", "v1alpha1", "abusepolicies"

pytestmark = pytest.mark.skipif(
    not (TESTDATA / "crd.yaml").is_file(), reason=f"recordings not found at {TESTDATA}"
)

Json = dict[str, Any]


# ============================================================================================
# Part 1: replay the recordings
# ============================================================================================


@dataclass
class Observed:
    status: int
    reason: str
    headers: dict[str, str]
    body: Any = None
    lines: list[tuple[float, Json]] = field(default_factory=list)
    ended_cleanly: bool | None = None
    duration: float = 0.0


@dataclass
class Exchange:
    file: str
    seq: int
    note: str
    request: Json
    response: Json

    @property
    def id(self) -> str:
        return f"{self.file.split('-')[0]}{self.seq:02d}"

    @property
    def is_watch(self) -> bool:
        return "lines" in self.response or "watch=true" in self.request["path"]


def _recordings() -> list[tuple[str, list[Json]]]:
    out = []
    for path in sorted(TESTDATA.glob("*.jsonl")):
        out.append((path.name, [json.loads(line) for line in path.read_text().splitlines()]))
    return out


class RvMap:
    """Recorded resourceVersions (and continue tokens) → the fake's, kept consistent."""

    def __init__(self) -> None:
        self.rv: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.mismatches: list[str] = []

    def learn(self, recorded: str | None, fake: str | None, where: str) -> None:
        if recorded is None or fake is None:
            return
        known = self.rv.setdefault(recorded, fake)
        if known != fake:
            self.mismatches.append(f"{where}: recorded RV {recorded} was {known}, now {fake}")

    def learn_body(self, recorded: Any, fake: Any, where: str) -> None:
        if not (isinstance(recorded, dict) and isinstance(fake, dict)):
            return
        rmeta, fmeta = recorded.get("metadata") or {}, fake.get("metadata") or {}
        self.learn(rmeta.get("resourceVersion"), fmeta.get("resourceVersion"), where)
        if rmeta.get("continue") and fmeta.get("continue"):
            self.tokens[rmeta["continue"]] = fmeta["continue"]
        for index, (r, f) in enumerate(
            zip(recorded.get("items") or [], fake.get("items") or [], strict=False)
        ):
            self.learn_body(r, f, f"{where} item {index}")

    def path(self, path: str) -> str:
        split = urlsplit(path)
        query = [
            (key, self._query_value(key, value))
            for key, value in parse_qsl(split.query, keep_blank_values=True)
        ]
        return split.path + ("?" + urlencode(query, quote_via=quote) if query else "")

    def _query_value(self, key: str, value: str) -> str:
        if key == "resourceVersion":
            return self.rv.get(value, value)
        if key == "continue":
            return self.tokens.get(value) or self._retoken(value)
        if key == "timeoutSeconds":
            return f"{int(value) * SCALE:g}"
        return value

    def _retoken(self, token: str) -> str:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw["rv"] = int(self.rv.get(str(raw["rv"]), raw["rv"]))
        encoded = json.dumps(raw, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(encoded).decode().rstrip("=")

    def body(self, body: Any) -> Any:
        if isinstance(body, dict):
            out = {k: self.body(v) for k, v in body.items()}
            rv = (out.get("metadata") or {}).get("resourceVersion")
            if isinstance(rv, str):
                out["metadata"]["resourceVersion"] = self.rv.get(rv, rv)
            return out
        if isinstance(body, list):
            return [self.body(v) for v in body]
        return body


def _send(
    server: KubeApiServer, tokens: dict[str, str | None], exchange: Exchange, rvs: RvMap
) -> Observed:
    request = exchange.request
    headers = {k: v for k, v in request["headers"].items() if k != "Authorization"}
    token = tokens[request["identity"]]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers["User-Agent"] = "OpenAPI-Generator/37.0.2/python"
    if "body" in request:
        payload: bytes | None = json.dumps(rvs.body(request["body"])).encode()
    elif "body_text" in request:
        payload = request["body_text"].encode()
    else:
        payload = None
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    started = time.monotonic()
    connection.request(request["method"], rvs.path(request["path"]), body=payload, headers=headers)
    response = connection.getresponse()
    observed = Observed(response.status, response.reason, dict(response.getheaders()))
    try:
        if exchange.is_watch and response.status == 200:
            try:
                while line := response.readline():
                    observed.lines.append((time.monotonic() - started, json.loads(line)))
                observed.ended_cleanly = True
            except http.client.IncompleteRead:
                observed.ended_cleanly = False
        else:
            raw = response.read()
            ctype = observed.headers.get("Content-Type", "")
            observed.body = (
                json.loads(raw) if ctype.startswith("application/json") else raw.decode()
            )
    finally:
        observed.duration = time.monotonic() - started
        connection.close()
    return observed


@pytest.fixture(scope="module")
def replayed() -> Iterator[tuple[dict[str, Observed], list[Exchange], RvMap, KubeApiServer]]:
    server = KubeApiServer(
        load_crd(TESTDATA / "crd.yaml"),
        rbac=True,
        bookmark_lead=1.5 * SCALE,
        bookmark_period=60 * SCALE,
    ).start()
    tokens: dict[str, str | None] = {
        "admin": ADMIN_TOKEN,
        "sidecar": server.service_account_token("shop", "abuse-sidecar"),
        "invalid": "not-a-token",
    }
    rvs = RvMap()
    results: dict[str, Observed] = {}
    exchanges: list[Exchange] = []
    try:
        for name, records in _recordings():
            threads: list[threading.Thread] = []
            origin = time.monotonic()
            for record in records:
                delay = origin + record["t_ms"] / 1000 * SCALE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if record["kind"] == "action":
                    if record["action"] == "apiserver restart":
                        server.restart(initializing=1)
                    # "etcd compaction": the real watch cache kept serving; so does the fake.
                    continue
                identity = record["request"]["identity"]
                if identity.startswith("none"):
                    tokens[identity] = None
                exchange = Exchange(
                    name, record["seq"], record["note"], record["request"], record["response"]
                )
                exchanges.append(exchange)

                def run(ex: Exchange = exchange) -> None:
                    observed = _send(server, tokens, ex, rvs)
                    results[ex.id] = observed
                    rvs.learn_body(ex.response.get("body"), observed.body, ex.id)
                    recorded = [line["event"] for line in ex.response.get("lines", [])]
                    fake = [event for _, event in observed.lines]
                    for r, f in zip(recorded, fake, strict=False):
                        if r["type"] == f["type"]:
                            rvs.learn_body(r["object"], f["object"], ex.id)

                if exchange.is_watch:
                    before = server.watch_count()
                    thread = threading.Thread(target=run, daemon=True)
                    thread.start()
                    threads.append(thread)
                    deadline = time.monotonic() + 5
                    while (
                        server.watch_count() <= before
                        and thread.is_alive()
                        and time.monotonic() < deadline
                    ):
                        time.sleep(0.002)
                else:
                    run()
            for thread in threads:
                thread.join(timeout=120)
        yield results, exchanges, rvs, server
    finally:
        server.stop()


def _exchange_ids() -> list[str]:
    if not TESTDATA.is_dir():
        return []
    return [
        f"{name.split('-')[0]}{r['seq']:02d}"
        for name, records in _recordings()
        for r in records
        if r["kind"] == "exchange"
    ]


_VOLATILE_META = {"uid", "resourceVersion", "creationTimestamp", "managedFields"}


def _shape(obj: Any) -> Any:
    """An object without what legitimately differs between two servers."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in _VOLATILE_META or key in ("clusterIP", "clusterIPs"):
                continue
            out[key] = _shape(value)
        return out
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return obj


def _item_shape(obj: Json) -> Any:
    shape = _shape(obj)
    if shape["metadata"]["name"] == "kubernetes":  # targets each server's own secure port
        for port in shape["spec"]["ports"]:
            port.pop("targetPort", None)
    return shape


def _numbers_out(text: str) -> str:
    return re.sub(r"\d+", "N", text)


def _compare_status(recorded: Json, fake: Json) -> None:
    assert fake.get("kind") == "Status"
    for key in ("apiVersion", "status", "reason", "code"):
        assert fake.get(key) == recorded.get(key), key
    if recorded.get("reason") in ("Invalid", "Conflict") and (recorded.get("details") or {}).get(
        "causes"
    ):
        causes = {(c["reason"], c["field"]) for c in recorded["details"]["causes"]}
        assert {(c["reason"], c["field"]) for c in fake["details"]["causes"]} == causes
        if recorded["reason"] == "Invalid":
            assert (
                fake["message"].split(" is invalid: ")[0]
                == recorded["message"].split(" is invalid: ")[0]
            )
    else:
        assert _numbers_out(fake["message"]) == _numbers_out(recorded["message"])
    recorded_details = {
        k: v for k, v in (recorded.get("details") or {}).items() if k not in ("uid", "causes")
    }
    fake_details = {
        k: v for k, v in (fake.get("details") or {}).items() if k not in ("uid", "causes")
    }
    assert fake_details == recorded_details
    if "continue" in recorded.get("metadata", {}):
        assert fake["metadata"].get("continue")


def _compare_list(recorded: Json, fake: Json) -> None:
    assert fake["kind"] == recorded["kind"]
    assert [_item_shape(i) for i in fake["items"]] == [_item_shape(i) for i in recorded["items"]]
    assert set(fake["metadata"]) == set(recorded["metadata"])
    assert fake["metadata"].get("remainingItemCount") == recorded["metadata"].get(
        "remainingItemCount"
    )
    assert bool(fake["metadata"].get("continue")) == bool(recorded["metadata"].get("continue"))


def _compare_watch(exchange: Exchange, observed: Observed) -> None:
    recorded = [line["event"] for line in exchange.response["lines"]]
    fake = [event for _, event in observed.lines]

    def main(events: list[Json]) -> list[tuple[str, str | None]]:
        out = []
        for event in events:
            meta = event["object"].get("metadata") or {}
            if event["type"] == "BOOKMARK" and INITIAL_EVENTS_END not in (
                meta.get("annotations") or {}
            ):
                continue
            out.append((event["type"], meta.get("name")))
        return out

    assert main(fake) == main(recorded)
    for r, f in zip(recorded, fake, strict=False):
        if r["type"] == "ERROR":
            _compare_status(r["object"], f["object"])
        elif r["type"] == f["type"] != "BOOKMARK":
            assert _shape(f["object"]) == _shape(r["object"])

    def periodic(events: list[Json]) -> list[Json]:
        return [
            e
            for e in events
            if e["type"] == "BOOKMARK"
            and INITIAL_EVENTS_END not in (e["object"]["metadata"].get("annotations") or {})
        ]

    recorded_bm, fake_bm = periodic(recorded), periodic(fake)
    # The fake never invents a bookmark; when the watched kind changed during the watch it
    # sends the pre-deadline one as the real server did. (Quiet real watches got bookmarks
    # only when the cache RV moved through other kinds' writes, which the fake ignores.)
    # Replayed time is compressed; on a loaded machine the fake's single pre-deadline
    # bookmark can fall inside a watch that the recording closed just before it.
    assert len(fake_bm) <= max(1, len(recorded_bm))
    if _live(recorded) and recorded_bm:
        assert fake_bm, "expected the pre-deadline BOOKMARK"
    for bookmark, recorded_bookmark in zip(fake_bm, recorded_bm, strict=False):
        assert set(bookmark["object"]) == set(recorded_bookmark["object"])
        assert bookmark["object"]["kind"] == recorded_bookmark["object"]["kind"]
    timeout = re.search(r"timeoutSeconds=(\d+)", exchange.request["path"])
    if timeout and fake and fake[-1]["type"] != "ERROR":
        # The stream ends at the deadline with the terminating chunk, not before.
        assert observed.ended_cleanly
        assert observed.duration >= int(timeout.group(1)) * SCALE * 0.95
    for stamp, event in observed.lines:
        if event in fake_bm and timeout:
            lead = int(timeout.group(1)) * SCALE - stamp
            assert 0 < lead <= 2.5 * SCALE + 0.1


def _live(events: list[Json]) -> list[Json]:
    """Events after the initial-events-end bookmark (all of them without one), bookmarks out."""
    start = 0
    for index, event in enumerate(events):
        if INITIAL_EVENTS_END in ((event["object"].get("metadata") or {}).get("annotations") or {}):
            start = index + 1
    return [e for e in events[start:] if e["type"] != "BOOKMARK"]


@pytest.mark.parametrize("exchange_id", _exchange_ids())
def test_fake_answers_like_the_real_apiserver(
    replayed: tuple[dict[str, Observed], list[Exchange], RvMap, KubeApiServer], exchange_id: str
) -> None:
    results, exchanges, _, _ = replayed
    exchange = next(e for e in exchanges if e.id == exchange_id)
    observed = results[exchange_id]
    recorded = exchange.response
    assert (observed.status, observed.reason) == (recorded["status"], recorded["reason"]), (
        exchange.note
    )
    for header in ("Content-Type", "Retry-After", "X-Content-Type-Options", "Cache-Control"):
        assert observed.headers.get(header) == recorded["headers"].get(header), header
    if exchange.is_watch and observed.status == 200:
        assert observed.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in observed.headers
        _compare_watch(exchange, observed)
        return
    if "body_text" in recorded:
        assert observed.body == recorded["body_text"]
        return
    body = recorded["body"]
    if body.get("kind") == "Status":
        if body.get("status") == "Success":
            assert observed.body["status"] == "Success"
            assert {k: v for k, v in observed.body["details"].items() if k != "uid"} == {
                k: v for k, v in body["details"].items() if k != "uid"
            }
        else:
            _compare_status(body, observed.body)
    elif body.get("kind") == "Table":
        assert [c["name"] for c in observed.body["columnDefinitions"]] == [
            c["name"] for c in body["columnDefinitions"]
        ]
        assert [r["cells"][:2] for r in observed.body["rows"]] == [
            r["cells"][:2] for r in body["rows"]
        ]
    elif "items" in body:
        _compare_list(body, observed.body)
    else:
        assert _shape(observed.body) == _shape(body)
        assert observed.body["metadata"].get("generation") == body["metadata"].get("generation")


def test_resource_versions_relate_as_recorded(
    replayed: tuple[dict[str, Observed], list[Exchange], RvMap, KubeApiServer],
) -> None:
    """One recorded RV always maps to one fake RV: the same object version, the same list
    revision, a DELETED carrying a new RV, every page carrying the first page's RV."""
    _, _, rvs, server = replayed
    assert not server.internal_errors
    assert not rvs.mismatches
    # Order is kept. (Several recorded list RVs may share one fake RV: the real cluster's
    # revision also moved through writes of its own, such as the apiserver's identity Lease.)
    pairs = sorted((int(r), int(f)) for r, f in rvs.rv.items())
    assert [f for _, f in pairs] == sorted(f for _, f in pairs)
    assert len(pairs) > 40


# ============================================================================================
# Part 2: the official client against the fake
# ============================================================================================


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer(load_crd(TESTDATA / "crd.yaml"), bookmark_lead=0.4) as running:
        yield running
        assert not running.internal_errors


@pytest.fixture
def custom(server: KubeApiServer) -> Any:
    return client.CustomObjectsApi(server.api_client())


@pytest.fixture
def core(server: KubeApiServer) -> Any:
    return client.CoreV1Api(server.api_client())


def _policy(name: str, mode: str = "enforce", **spec: Any) -> Json:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AbusePolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"hosts": [f"{name}.example.com"], "mode": mode, **spec},
    }


class Collector:
    """Runs ``Watch.stream`` in a thread and collects what it yields (or raises)."""

    def __init__(self, func: Any, *args: Any, **kwargs: Any) -> None:
        self.watch = watch.Watch()
        self.events: list[Json] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func: Any, args: Any, kwargs: Any) -> None:
        try:
            for event in self.watch.stream(func, *args, **kwargs):
                self.events.append(event)
        except BaseException as exc:  # collected for the test to assert on
            self.error = exc

    def join(self, timeout: float = 10) -> Collector:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "watch did not end"
        return self

    def wait_for(self, count: int, timeout: float = 5) -> list[Json]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events

    def summary(self) -> list[tuple[str, str | None]]:
        return [(e["type"], e["raw_object"]["metadata"].get("name")) for e in self.events]


def test_list_then_watch_from_the_list_rv_sees_every_change(
    server: KubeApiServer, custom: Any
) -> None:
    for name in ("p1", "p2", "p3"):
        custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy(name))
    listing = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)
    list_rv = listing["metadata"]["resourceVersion"]
    stream = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=list_rv,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    )
    server.wait_for_watches(PLURAL)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "shop", PLURAL, "p1", {"spec": {"mode": "shadow"}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "p2")
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p4"))
    stream.join()
    assert stream.error is None
    assert stream.summary() == [
        ("MODIFIED", "p1"),
        ("DELETED", "p2"),
        ("ADDED", "p4"),
        ("BOOKMARK", None),
    ]
    modified = stream.events[0]["raw_object"]
    assert modified["metadata"]["generation"] == 2
    assert modified["spec"]["mode"] == "shadow"
    # The client remembers the bookmark's RV: resuming from it replays nothing.
    assert stream.watch.resource_version == str(server.revision)
    again = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=stream.watch.resource_version,
        timeout_seconds=1,
    ).join()
    assert again.events == []


def test_chunked_list_pages_share_the_first_rv(server: KubeApiServer, custom: Any) -> None:
    for index in range(5):
        custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy(f"p{index}"))
    first = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, limit=2)
    custom.delete_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "p4")  # after page 1
    names = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    assert first["metadata"]["remainingItemCount"] == 3
    while token:
        page = custom.list_namespaced_custom_object(
            GROUP, VERSION, "shop", PLURAL, limit=2, _continue=token
        )
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"]["continue"]
    # A consistent snapshot: p4 is still in it.
    assert names == ["p0", "p1", "p2", "p3", "p4"]


def test_too_old_rv_raises_410_after_the_clients_single_retry(
    server: KubeApiServer, custom: Any
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
    old_rv = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["metadata"][
        "resourceVersion"
    ]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "shop", PLURAL, "p1", {"metadata": {"labels": {"a": "b"}}}
    )
    server.compact()
    # Without timeout_seconds the client silently re-watches once; the fake answers 410 again.
    stream = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=old_rv,
    )
    stream.join()
    assert isinstance(stream.error, client.ApiException)
    assert stream.error.status == 410
    assert "too old resource version" in str(stream.error.reason)
    watches = [r for r in server.requests_to(PLURAL, "GET") if r.watch]
    assert [r.query["resourceVersion"] for r in watches] == [old_rv, old_rv]
    # The way out: relist and watch from the new list RV.
    new_rv = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["metadata"][
        "resourceVersion"
    ]
    ok = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=new_rv,
        timeout_seconds=1,
    ).join()
    assert ok.error is None


def test_dropped_connection_surfaces_as_a_protocol_error_and_resume_misses_nothing(
    server: KubeApiServer, custom: Any
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["metadata"][
        "resourceVersion"
    ]
    stream = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=rv,
        timeout_seconds=30,
    )
    server.wait_for_watches(PLURAL)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "shop", PLURAL, "p1", {"spec": {"mode": "shadow"}}
    )
    stream.wait_for(1)
    assert server.drop_watches() == 1
    stream.join()
    assert isinstance(stream.error, urllib3.exceptions.ProtocolError)
    # Writes while nobody watches are replayed from the last RV the client saw.
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p2"))
    resumed = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=stream.watch.resource_version,
        timeout_seconds=1,
    ).join()
    assert resumed.summary() == [("ADDED", "p2")]


def test_clean_stream_end_makes_the_client_rewatch_from_its_last_rv(
    server: KubeApiServer, custom: Any
) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["metadata"][
        "resourceVersion"
    ]
    stream = Collector(
        custom.list_namespaced_custom_object, GROUP, VERSION, "shop", PLURAL, resource_version=rv
    )
    server.wait_for_watches(PLURAL)
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
    stream.wait_for(1)
    seen_rv = stream.events[0]["raw_object"]["metadata"]["resourceVersion"]
    server.drop_watches(clean=True)
    server.wait_for_watches(PLURAL)  # the client came back by itself
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p2"))
    stream.wait_for(2)
    stream.watch.stop()
    server.drop_watches(clean=True)
    stream.join()
    assert stream.summary() == [("ADDED", "p1"), ("ADDED", "p2")]
    watches = [r for r in server.requests_to(PLURAL, "GET") if r.watch]
    assert [r.query["resourceVersion"] for r in watches] == [rv, seen_rv]


def test_initial_events_then_bookmark_then_live(server: KubeApiServer, custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("b"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("a"))
    stream = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version="0",
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    )
    server.wait_for_watches(PLURAL)
    custom.delete_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "a")
    stream.join()
    assert stream.summary()[:4] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("BOOKMARK", None),
        ("DELETED", "a"),
    ]
    assert stream.events[2]["raw_object"]["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}


def test_status_patches_as_the_client_sends_them(server: KubeApiServer, custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Compiled",
        "message": "",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-11-23T09:00:00Z",
    }
    # merge-patch+json: the client's default for a dict body
    merged = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        "p1",
        {
            "spec": {"mode": "shadow"},
            "status": {"observedGeneration": 1, "conditions": [condition]},
        },
    )
    assert merged["spec"]["mode"] == "enforce"  # /status ignores spec
    assert merged["metadata"]["generation"] == 1
    assert merged["status"]["conditions"][0]["reason"] == "Compiled"
    # json-patch+json: a list body with the content type forced
    patched = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        "p1",
        [
            {"op": "test", "path": "/status/observedGeneration", "value": 1},
            {"op": "replace", "path": "/status/conditions/0/message", "value": "ok"},
        ],
        _content_type="application/json-patch+json",
    )
    assert patched["status"]["conditions"][0]["message"] == "ok"
    assert int(patched["metadata"]["resourceVersion"]) > int(merged["metadata"]["resourceVersion"])
    with pytest.raises(client.ApiException) as failed_test:
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            "shop",
            PLURAL,
            "p1",
            [{"op": "test", "path": "/status/observedGeneration", "value": 7}],
            _content_type="application/json-patch+json",
        )
    assert failed_test.value.status == 422
    # server-side apply with a field manager; an identical re-apply changes nothing
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AbusePolicy",
        "metadata": {"name": "p1", "namespace": "shop"},
        "status": {"observedGeneration": 1, "conditions": [{**condition, "message": "applied"}]},
    }
    applied = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        "p1",
        body,
        field_manager="abuse-sidecar",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    again = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        "p1",
        body,
        field_manager="abuse-sidecar",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert applied["status"]["conditions"][0]["message"] == "applied"
    assert again["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"]
    managers = {
        (m["manager"], m["operation"], m.get("subresource"))
        for m in applied["metadata"]["managedFields"]
    }
    assert ("abuse-sidecar", "Apply", "status") in managers
    # invalid status: 422 with the field path
    with pytest.raises(client.ApiException) as invalid:
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            "shop",
            PLURAL,
            "p1",
            {"status": {"conditions": [{**condition, "status": "Yes"}]}},
        )
    assert invalid.value.status == 422
    assert (
        json.loads(str(invalid.value.body))["details"]["causes"][0]["field"]
        == "status.conditions[0].status"
    )
    # a stale resourceVersion precondition: 409
    with pytest.raises(client.ApiException) as stale:
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            "shop",
            PLURAL,
            "p1",
            {"metadata": {"resourceVersion": merged["metadata"]["resourceVersion"]}, "status": {}},
        )
    assert stale.value.status == 409


def test_service_annotation_added_changed_removed(server: KubeApiServer, core: Any) -> None:
    core.create_namespaced_service(
        "shop", {"metadata": {"name": "reviews"}, "spec": {"ports": [{"port": 80}]}}
    )
    rv = core.list_service_for_all_namespaces().metadata.resource_version
    stream = Collector(core.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=1)
    server.wait_for_watches("services")
    annotation = "abuse.sidecar.dev/policy"
    for value in ("p1", "p2", None):
        core.patch_namespaced_service(
            "reviews", "shop", {"metadata": {"annotations": {annotation: value}}}
        )
    stream.join()
    seen = [
        (e["type"], (e["object"].metadata.annotations or {}).get(annotation)) for e in stream.events
    ]
    assert seen == [("MODIFIED", "p1"), ("MODIFIED", "p2"), ("MODIFIED", None)]
    with pytest.raises(client.ApiException) as unsupported:
        core.list_namespaced_service("shop", field_selector=f"metadata.annotations.{annotation}=p1")
    assert unsupported.value.status == 400
    # The strategic merge the client sends for built-ins merges ports by port number.
    service = core.patch_namespaced_service(
        "reviews", "shop", {"spec": {"ports": [{"port": 81, "name": "b"}]}}
    )
    assert [p.port for p in service.spec.ports] == [80, 81]


def test_secret_label_selection_and_rotation(server: KubeApiServer, core: Any) -> None:
    selector = "abuse.sidecar.dev/api-key=true"
    core.create_namespaced_secret(
        "shop", {"metadata": {"name": "key-alice"}, "stringData": {"api_key": "one"}}
    )
    listing = core.list_namespaced_secret("shop", label_selector=selector)
    assert listing.items == []
    stream = Collector(
        core.list_namespaced_secret,
        "shop",
        label_selector=selector,
        resource_version=listing.metadata.resource_version,
        timeout_seconds=1,
    )
    server.wait_for_watches("secrets")
    label = {"metadata": {"labels": {"abuse.sidecar.dev/api-key": "true"}}}
    core.patch_namespaced_secret("key-alice", "shop", label)
    core.patch_namespaced_secret("key-alice", "shop", {"stringData": {"api_key": "two"}})
    unlabelled = core.patch_namespaced_secret(
        "key-alice", "shop", {"metadata": {"labels": {"abuse.sidecar.dev/api-key": None}}}
    )
    core.patch_namespaced_secret("key-alice", "shop", {"stringData": {"api_key": "three"}})
    core.patch_namespaced_secret("key-alice", "shop", label)
    core.delete_namespaced_secret("key-alice", "shop")
    stream.join()
    assert [e["type"] for e in stream.events] == [
        "ADDED",
        "MODIFIED",
        "DELETED",
        "ADDED",
        "DELETED",
    ]
    keys = [base64.b64decode(e["object"].data["api_key"]).decode() for e in stream.events]
    assert keys == ["one", "two", "two", "three", "three"]
    # Leaving the selection: the previous content, with the new RV.
    left = stream.events[2]["object"]
    assert left.metadata.labels == {"abuse.sidecar.dev/api-key": "true"}
    assert left.metadata.resource_version == unlabelled.metadata.resource_version


def test_lease_lock_create_renew_and_conflict(server: KubeApiServer) -> None:
    api_client = server.api_client()
    lock_a = LeaseLock("abuse-sidecar-leader", "shop", "pod-a")
    lock_a.api_instance = client.CoordinationV1Api(api_client)
    found, _ = lock_a.get("abuse-sidecar-leader", "shop")
    assert not found
    # LeaseLock's record format is str(datetime); it sends isoformat (+00:00) on the wire.
    record = LeaderElectionRecord(
        "pod-a", "6", "2026-11-23 09:10:00.123456+0000", "2026-11-23 09:10:00.123456+0000"
    )
    assert lock_a.create("abuse-sidecar-leader", "shop", record)
    found, current = lock_a.get("abuse-sidecar-leader", "shop")
    assert found
    assert current.holder_identity == "pod-a"
    # pod-b read the lease before pod-a renewed it: its update carries a stale RV.
    lock_b = LeaseLock("abuse-sidecar-leader", "shop", "pod-b")
    lock_b.api_instance = client.CoordinationV1Api(api_client)
    lock_b.get("abuse-sidecar-leader", "shop")
    renewed = LeaderElectionRecord(
        "pod-a", "6", record.acquire_time, "2026-11-23 09:10:04.000001+0000"
    )
    assert lock_a.update("abuse-sidecar-leader", "shop", renewed)
    takeover = LeaderElectionRecord(
        "pod-b", "6", "2026-11-23 09:10:05+0000", "2026-11-23 09:10:05+0000"
    )
    assert not lock_b.update("abuse-sidecar-leader", "shop", takeover)
    lease = server.get("leases", "shop", "abuse-sidecar-leader")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["renewTime"] == "2026-11-23T09:10:04.000001Z"


def test_errors_reach_the_client_as_api_exceptions(server: KubeApiServer) -> None:
    bad: Any = client.CustomObjectsApi(server.api_client("wrong-token"))
    with pytest.raises(client.ApiException) as unauthorized:
        bad.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)
    assert unauthorized.value.status == 401
    # A 429 with Retry-After (what a restarted apiserver answers a watch) is retried by
    # urllib3 itself for GETs: the caller only sees the watch that followed.
    server.inject(429, path=f"/{PLURAL}$", watch=True, times=1)
    custom: Any = client.CustomObjectsApi(server.api_client())
    stream = Collector(
        custom.list_namespaced_custom_object, GROUP, VERSION, "shop", PLURAL, timeout_seconds=1
    ).join()
    assert stream.error is None
    assert [r.code for r in server.requests_to(PLURAL) if r.watch] == [429, 200]
    server.inject(503, path=f"/{PLURAL}$", method="GET", times=2)
    for _ in range(2):
        with pytest.raises(client.ApiException) as unavailable:
            custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)
        assert unavailable.value.status == 503
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["items"] == []


def test_rbac_decides_per_verb_and_subresource() -> None:
    with KubeApiServer(load_crd(TESTDATA / "crd.yaml"), rbac=True) as server:
        token = server.service_account_token("shop", "abuse-sidecar")
        server.create(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "abuse-sidecar", "namespace": "shop"},
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "resources": [PLURAL],
                        "verbs": ["get", "list", "watch"],
                    },
                    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
                ],
            }
        )
        server.create(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "abuse-sidecar", "namespace": "shop"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "abuse-sidecar",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "abuse-sidecar", "namespace": "shop"}
                ],
            }
        )
        server.create(_policy("p1"))
        sidecar: Any = client.CustomObjectsApi(server.api_client(token))
        assert (
            len(sidecar.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["items"]) == 1
        )
        sidecar.patch_namespaced_custom_object_status(
            GROUP, VERSION, "shop", PLURAL, "p1", {"status": {"observedGeneration": 1}}
        )
        with pytest.raises(client.ApiException) as spec_patch:
            sidecar.patch_namespaced_custom_object(
                GROUP, VERSION, "shop", PLURAL, "p1", {"spec": {"mode": "shadow"}}
            )
        assert spec_patch.value.status == 403
        with pytest.raises(client.ApiException) as cluster_wide:
            sidecar.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        assert cluster_wide.value.status == 403
        assert "at the cluster scope" in json.loads(str(cluster_wide.value.body))["message"]


def test_kubeconfig_with_tls_and_ca(tmp_path: Path) -> None:
    with KubeApiServer(load_crd(TESTDATA / "crd.yaml"), tls=True) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace="shop")
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        assert api_client.configuration.host.startswith("https://")
        core: Any = client.CoreV1Api(api_client)
        names = [s.metadata.name for s in core.list_service_for_all_namespaces().items]
        assert names == ["kubernetes"]
        assert (
            yaml.safe_load(kubeconfig.read_text())["contexts"][0]["context"]["namespace"] == "shop"
        )


def test_restart_cuts_every_stream_and_forgets_history(server: KubeApiServer, custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
    old_rv = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["metadata"][
        "resourceVersion"
    ]
    stream = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=old_rv,
        timeout_seconds=30,
    )
    server.wait_for_watches(PLURAL)
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p2"))
    stream.wait_for(1)
    server.restart(initializing=1)
    stream.join()
    assert isinstance(stream.error, urllib3.exceptions.ProtocolError)
    # The first watch after the restart gets 429 + Retry-After (urllib3 retries it), then
    # 200 + ERROR 410 for the RV from before the restart.
    again = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=old_rv,
        timeout_seconds=1,
    ).join()
    assert isinstance(again.error, client.ApiException)
    assert again.error.status == 410
    assert [r.code for r in server.requests_to(PLURAL) if r.watch][-2:] == [429, 200]


def test_hooks_store_unvalidated_specs_and_send_bookmarks_on_demand(
    server: KubeApiServer, custom: Any
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)["metadata"][
        "resourceVersion"
    ]
    stream = Collector(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "shop",
        PLURAL,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=30,
    )
    server.wait_for_watches(PLURAL)
    # A spec the CRD schema would refuse (the product's own validation must catch it).
    stored = server.update(_policy("p1", mode="block-everything"), validate=False)
    assert stored["metadata"]["generation"] == 2
    assert server.send_bookmarks() == 1
    stream.wait_for(2)
    server.drop_watches(clean=True)
    stream.join()
    assert stream.summary() == [("MODIFIED", "p1"), ("BOOKMARK", None)]
    assert stream.events[0]["raw_object"]["spec"]["mode"] == "block-everything"
    assert (
        stream.events[1]["raw_object"]["metadata"]["resourceVersion"]
        == stored["metadata"]["resourceVersion"]
    )
    with pytest.raises(client.ApiException) as refused:
        custom.replace_namespaced_custom_object(
            GROUP,
            VERSION,
            "shop",
            PLURAL,
            "p1",
            {**_policy("p1", mode="block-everything"), "metadata": stored["metadata"]},
        )
    assert refused.value.status == 422


async def test_the_asyncio_client_watches_too(server: KubeApiServer) -> None:
    from kubernetes.aio import client as aio_client
    from kubernetes.aio import watch as aio_watch

    configuration = aio_client.Configuration(
        host=server.url,
        api_key={"BearerToken": ADMIN_TOKEN},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    async with aio_client.ApiClient(configuration) as api_client:
        custom: Any = aio_client.CustomObjectsApi(api_client)
        await custom.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, _policy("p1"))
        listing = await custom.list_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL)
        rv = listing["metadata"]["resourceVersion"]
        server.update(_policy("p1", mode="shadow"))
        seen = [
            (event["type"], event["raw_object"]["spec"].get("mode"))
            async for event in aio_watch.Watch().stream(
                custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                "shop",
                PLURAL,
                resource_version=rv,
                timeout_seconds=1,
            )
        ]
        assert seen == [("MODIFIED", "shadow")]
        server.compact()
        with pytest.raises(aio_client.ApiException) as gone:
            async for _ in aio_watch.Watch().stream(
                custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                "shop",
                PLURAL,
                resource_version=rv,
                timeout_seconds=1,
            ):
                pass
        assert gone.value.status == 410
