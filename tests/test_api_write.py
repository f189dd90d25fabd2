"""Write endpoints: ingest, Alertmanager webhook, Zipkin spans; the token; body limits; escaping."""

from __future__ import annotations

import json

import pytest

from api.app import create_app
from factories import T0, connection, listener
from tracer.records import format_ts

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(store):
    return create_app({"STORE": store, "TESTING": True, "TOKEN": TOKEN})


@pytest.fixture
def client(app):
    return app.test_client()


def batch(**kw):
    body = {"batch_id": "b-1", "connections": [connection()], "listeners": [listener()]}
    body.update(kw)
    return body


# -- token -------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/api/v1/ingest", "/api/v1/alerts", "/api/v2/spans"])
@pytest.mark.slow
def test_writes_need_the_token(client, url):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.post(url, json={}, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["code"] == 401


def test_without_token_writes_only_on_loopback(store):
    public = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "0.0.0.0"}).test_client()
    response = public.post("/api/v1/ingest", json=batch())
    assert response.status_code == 403 and "PHOBOS_TOKEN" in response.get_json()["message"]
    unknown = create_app({"STORE": store, "TESTING": True}).test_client()
    assert unknown.post("/api/v1/ingest", json=batch()).status_code == 403
    local = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "127.0.0.1"}).test_client()
    assert local.post("/api/v1/ingest", json=batch()).status_code == 200
    # bound to loopback, but the request comes from elsewhere (a proxy in front)
    response = local.post("/api/v1/ingest", json=batch(), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 403


# -- ingest ------------------------------------------------------------------

def test_ingest_reports_rejections_per_index(client, store):
    bad = connection(remote_port=70000)
    body = batch(connections=[connection(), bad, connection(ts="not a time")])
    response = client.post("/api/v1/ingest", json=body, headers=AUTH)
    assert response.status_code == 200
    result = response.get_json()
    assert result["connections"]["accepted"] == 1
    assert [e["index"] for e in result["connections"]["errors"]] == [1, 2]
    assert result["connections"]["errors"][0]["field"] == "remote_port"
    assert result["listeners"]["accepted"] == 1
    assert store.query(f"SELECT count() FROM {store.db}.connections")[0][0] == 1
    assert store.query(f"SELECT count() FROM {store.db}.dead_letters")[0][0] == 2


def test_ingest_replay_is_stored_once(client, store):
    body = batch(connections=[connection(ts=format_ts(T0 + 60 * i)) for i in range(1, 4)])
    for _ in range(2):
        assert client.post("/api/v1/ingest", json=body, headers=AUTH).status_code == 200
    assert store.query(f"SELECT count() FROM {store.db}.connections")[0][0] == 3


def test_ingest_counts_reach_metrics(client):
    client.post("/api/v1/ingest", json=batch(), headers=AUTH)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'phobos_ingest_records_total{kind="connections",outcome="accepted"}' in text
    assert "phobos_ingest_batches_total" in text
    assert 'phobos_http_requests_total{endpoint="/api/v1/ingest",method="POST",status="200"}' in text


@pytest.mark.parametrize("body", [
    [], "text", {"connections": {}}, {"batch_id": 5}, {"batch_id": ""}, {"unknown": []},
    {"listeners": "x"},
])
@pytest.mark.slow
def test_ingest_bad_envelope(client, body):
    response = client.post("/api/v1/ingest", json=body, headers=AUTH)
    assert response.status_code == 400 and response.get_json()["code"] == 400


def test_ingest_not_json(client):
    response = client.post("/api/v1/ingest", data=b"\xff\x00garbage", headers=AUTH,
                           content_type="application/json")
    assert response.status_code == 400 and response.get_json()["code"] == 400


def test_oversize_body_refused(store):
    app = create_app({"STORE": store, "TESTING": True, "TOKEN": TOKEN, "MAX_BODY_BYTES": 10_000})
    client = app.test_client()
    body = batch(connections=[connection(comm="x" * 100) for _ in range(200)])
    for url in ("/api/v1/ingest", "/api/v1/alerts", "/api/v2/spans", "/api/v1/sql"):
        response = client.post(url, data=json.dumps(body), headers=AUTH, content_type="application/json")
        assert response.status_code == 413, url
        assert response.get_json()["code"] == 413


# -- Alertmanager --------------------------------------------------------------

def alertmanager(status="firing", summary="Error rate high", service="api", starts=T0 + 100, ends=None):
    return {
        "version": "4", "status": status, "receiver": "phobos", "groupKey": "{}:{}",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "HighErrorRate", "service": service, "severity": "critical"},
            "annotations": {"summary": summary},
            "startsAt": format_ts(starts).replace("Z", ".123456789Z"),
            "endsAt": format_ts(ends) if ends else "0001-01-01T00:00:00Z",
            "fingerprint": "abc123",
        }],
    }


def test_alerts_fire_and_resolve(client, store):
    assert client.post("/api/v1/alerts", json=alertmanager(), headers=AUTH).get_json() == {"stored": 1}
    from api.views import reads

    firing = reads.firing_alerts(store, T0 + 200)
    assert [(a["alertname"], a["service"], a["status"]) for a in firing] == [("HighErrorRate", "api", "firing")]
    assert reads.firing_alerts(store, T0 + 50) == []  # before it started
    client.post("/api/v1/alerts", json=alertmanager("resolved", ends=T0 + 300), headers=AUTH)
    assert len(reads.firing_alerts(store, T0 + 200)) == 1  # time travel: it was firing then
    assert reads.firing_alerts(store, T0 + 400) == []


def test_firing_alerts_follow_each_alerts_latest_notification(store):
    """Random notification histories (repeats, resolutions, late re-fires, separate inserts that
    the table has not merged yet): the alerts firing at any time are those whose latest
    notification by receipt says so, as a plain Python reading of the rule finds them."""
    import random

    from api.views import reads

    rng = random.Random(7)
    rows, latest = [], {}
    store.execute(f"SYSTEM STOP MERGES {store.db}.alerts")  # the parts stay apart, as on a busy server
    for batch in range(6):
        chunk = []
        for _ in range(40):
            fp, start = f"fp{rng.randrange(12)}", T0 + 60 * rng.randrange(10)
            status = rng.choice(["firing", "firing", "resolved"])
            ends = rng.choice([0, start + 60 * rng.randrange(1, 20)]) if status == "firing" else \
                start + 60 * rng.randrange(0, 20)
            received = T0 + len(rows) + len(chunk)  # later notifications are received later
            chunk.append({"received_at": received, "fingerprint": fp, "status": status, "alertname": "A" + fp,
                          "service": "svc" + fp[-1], "severity": "critical", "starts_at": start, "ends_at": ends,
                          "summary": "", "labels": {}, "annotations": {}})
            latest[(fp, start)] = chunk[-1]
        store.insert_rows("alerts", chunk)  # one part each: FINAL must merge them at read time
        rows += chunk
    for at in range(T0 - 60, T0 + 60 * 30, 45):
        want = sorted((r["fingerprint"], r["starts_at"]) for r in latest.values()
                      if r["starts_at"] <= at and (
                          (r["status"] == "firing" and (r["ends_at"] <= r["starts_at"] or r["ends_at"] > at))
                          or (r["status"] == "resolved" and r["ends_at"] > at)))
        got = reads.firing_alerts(store, at)
        assert sorted((a["fingerprint"], _epoch(a["starts_at"])) for a in got) == want, at
        assert all(a["status"] == latest[(a["fingerprint"], _epoch(a["starts_at"]))]["status"] for a in got)


def _epoch(text: str) -> int:
    from datetime import datetime, timezone

    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize("body", [
    {}, {"alerts": "x"}, {"alerts": [1]}, {"alerts": [{"status": "weird"}]},
    {"alerts": [{"labels": {"a": 1}}]}, {"alerts": [{"startsAt": "yesterday"}]},
])
@pytest.mark.slow
def test_alerts_bad_payload(client, body):
    response = client.post("/api/v1/alerts", json=body, headers=AUTH)
    assert response.status_code == 400 and response.get_json()["code"] == 400


def test_alert_text_is_escaped_in_notices(client, store):
    from fixtures import AT, WINDOW, build

    build(store)
    evil = '<script>alert("x")</script>'
    client.post("/api/v1/alerts", json=alertmanager(summary=evil), headers=AUTH)
    for url in ("/api/v1/areas", "/api/v1/areas/shop", "/api/v1/services/web"):
        text = client.get(f"{url}?at={AT}&window={WINDOW}").get_data(as_text=True)
        view = json.loads(text)
        notices = [n for node in view["nodes"] for n in node.get("notices", [])]
        assert notices, url
        assert all("<" not in n["title"] and ">" not in n["title"] for n in notices)
        assert any("&lt;script&gt;" in n["title"] for n in notices)
    area = client.get(f"/api/v1/areas/shop?at={AT}&window={WINDOW}").get_json()
    assert {n["name"]: n["class"] for n in area["nodes"]}["api"] == "alert"
    areas = client.get(f"/api/v1/areas?at={AT}&window={WINDOW}").get_json()
    assert {n["name"]: n["class"] for n in areas["nodes"]}["shop"] == "danger"
    summary = client.get(f"/api/v1/services/api/summary?at={AT}&window={WINDOW}").get_json()
    assert [a["summary"] for a in summary["alerts"]] == [evil]  # data stays data in JSON


def test_grouped_names_are_escaped(store):
    """Names reported by hosts reach the "N more" notice: escaped there too."""
    from api.ingest.batches import ingest_batch

    evil = [f"<img src=x onerror=alert({i})>" for i in range(4)]
    conns = [connection(service="web", remote_ip=f"198.51.100.{i}", remote_port=443) for i in range(4)]
    conns += [connection(service=name, host=f"h{i}", remote_ip="10.0.0.2") for i, name in enumerate(evil)]
    ingest_batch(store, "connections", conns)
    ingest_batch(store, "listeners", [listener()])
    app = create_app({"STORE": store, "TESTING": True, "MAX_NODES": 3})
    view = app.test_client().get(f"/api/v1/areas/unassigned?at={T0 + 120}&window=5m").get_json()
    titles = " ".join(n["title"] for n in view["notices"])
    assert "&lt;img" in titles and "<img" not in titles


# -- Zipkin --------------------------------------------------------------------

def span(id_, service, kind=None, parent=None, remote=None, ts=T0 + 30, error=False, shared=False):
    s = {"traceId": "7e1", "id": id_, "name": "call", "timestamp": ts * 1_000_000, "duration": 1500,
         "localEndpoint": {"serviceName": service}}
    if kind:
        s["kind"] = kind
    if parent:
        s["parentId"] = parent
    if remote:
        s["remoteEndpoint"] = {"serviceName": remote}
    if error:
        s["tags"] = {"error": "boom"}
    if shared:
        s["shared"] = True
    return s


def test_zipkin_spans_become_calls(client, store):
    from api.resolution.stage import Resolver

    store.migrate(span_ttl_hours=48)  # the spans are T0's, about six hours old
    spans = [
        span("a", "web", "SERVER"),                                    # root
        span("b", "web", "CLIENT", parent="a", remote="api"),          # web -> api (client side)
        span("c", "api", "SERVER", parent="b"),                        # ... and its server side
        span("d", "api", "CLIENT", parent="c", remote="ledger", error=True),  # server not traced
        span("e", "ledger", "SERVER", shared=True),                    # no: different id
        span("f", "api", "CLIENT", parent="c", remote="db"),
        span("f", "db", "SERVER", shared=True),                        # shared span model
    ]
    response = client.post("/api/v2/spans", json=spans, headers=AUTH)
    assert response.status_code == 202 and response.get_json() == {"spans": 7, "stored": 7}
    want = {("web", "api"): (1, 0), ("api", "ledger"): (1, 1), ("api", "db"): (1, 0)}

    def summary_calls():
        summary = client.get(f"/api/v1/services/api/summary?at={T0 + 120}&window=5m")
        assert summary.status_code == 200
        return {(c["caller"], c["callee"]): (c["calls"], c["errors"]) for c in summary.get_json()["traced_calls"]}

    # before the stage links the minute, views link the spans themselves
    assert summary_calls() == want
    # a retried post changes nothing
    client.post("/api/v2/spans", json=spans, headers=AUTH)
    assert store.query(f"SELECT count() FROM {store.db}.spans")[0][0] == 7
    stage = Resolver(store, now=lambda: T0 + 3600)
    stage.run_once()
    assert stage.pending_calls() == []
    rows = store.query(
        f"SELECT caller, callee, sum(calls), sum(errors) FROM {store.db}.resolved_calls_1m "
        f"GROUP BY caller, callee HAVING sum(n) > 0 ORDER BY caller, callee")
    assert {(a, b): (n, e) for a, b, n, e in rows} == want
    client.post("/api/v2/spans", json=spans, headers=AUTH)
    assert summary_calls() == want


@pytest.mark.parametrize("body", [{}, [1], [{"id": "a"}], [{"traceId": "a", "id": "b", "timestamp": "now"}],
                                  [{"traceId": "a", "id": "b", "duration": -1}],
                                  [{"traceId": "not-hex", "id": "b", "timestamp": 1}],
                                  [{"traceId": "a", "id": "b", "kind": "SIDEWAYS", "timestamp": 1}]])
@pytest.mark.slow
def test_zipkin_bad_payload(client, body):
    response = client.post("/api/v2/spans", json=body, headers=AUTH)
    assert response.status_code == 400 and response.get_json()["code"] == 400


def test_writes_clear_the_result_cache(client, store):
    at = T0 + 600
    first = [connection(ts=format_ts(T0 + 60), remote_ip="10.0.0.2")]
    client.post("/api/v1/ingest", json=batch(connections=first), headers=AUTH)
    view = client.get(f"/api/v1/areas/unassigned?at={at}&window=10m").get_json()
    assert {n["name"] for n in view["nodes"]} == {"frontend", "web"}
    # a new client appears; the cached view must not hide it
    more = [connection(ts=format_ts(T0 + 120), service="batch", host="host-c", remote_ip="10.0.0.2")]
    client.post("/api/v1/ingest", json=batch(batch_id="b-2", connections=more, listeners=[]), headers=AUTH)
    view = client.get(f"/api/v1/areas/unassigned?at={at}&window=10m").get_json()
    assert "batch" in {n["name"] for n in view["nodes"]}


def test_result_cache_can_be_disabled(store):
    from api.views.cache import ResultCache

    calls = []
    cache = ResultCache(0)
    for _ in range(2):
        cache.get("k", lambda: calls.append(1))
    assert len(calls) == 2
    cache = ResultCache(60)
    for _ in range(2):
        cache.get("k", lambda: calls.append(1) or "v")
    assert len(calls) == 3 and cache.hits == 1
