"""Health at every level and the problems list, on the hand-built fixture (tests/fixtures.py) in chDB.

In the fixture web's connects to api fail 10 % (9 of 90 in the whole
window): with the default thresholds (warning 1 %, danger 5 %) that edge is
danger, and so are api, the area shop that holds it and the instances of
api that served it; nothing else fails.
"""

from __future__ import annotations

import pytest

import fixtures as fx
from api.app import create_app
from api.config import load_config
from api.views import graph, health

VIEW = f"at={fx.AT}&window={fx.WINDOW}"


@pytest.fixture(scope="module")
def fixture_store(chdb_dir):
    from api.storage import open_store

    store = open_store(f"chdb://{chdb_dir}?database=api_health_fx", role="pytest")
    store.migrate()
    fx.build(store)
    yield store
    store.close()


def client_of(store, **config):
    return create_app({"STORE": store, "TESTING": True, **config}).test_client()


@pytest.fixture(scope="module")
def client(fixture_store):
    return client_of(fixture_store)


def get(client, url, status=200):
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    return response.get_json()


def by_name(view):
    return {n["name"]: n for n in view["nodes"]}


def by_pair(view):
    return {(c["source"], c["target"]): c for c in view["connections"]}


# -- the model, without a store ---------------------------------------------------------------

def _row(s, d, connects, failures, s_area="A", d_area="B"):
    return {"s_name": s, "d_name": d, "s_area": s_area, "d_area": d_area, "connects": connects,
            "failures": failures, "calls": 0}


def test_edge_class_thresholds_and_minimum():
    t = health.Thresholds(warning=0.01, danger=0.05, min_connects=10)
    assert health.edge_class({"connects": 100, "failures": 0}, t) == "normal"
    assert health.edge_class({"connects": 100, "failures": 1}, t) == "warning"
    assert health.edge_class({"connects": 100, "failures": 5}, t) == "danger"
    # Too few attempts to tell: one failure of two is noise.
    assert health.edge_class({"connects": 2, "failures": 1}, t) == "normal"
    # An edge only traces saw is classed by its failed calls.
    assert health.edge_class({"connects": 0, "calls": 50, "call_errors": 10}, t) == "danger"


def test_worst_of_the_rows_behind_an_edge_and_its_server():
    """A failing pair inside an area edge makes the edge and the area it serves red, though the sum is mild."""
    rows = [_row("a1", "b1", 1000, 0), _row("a2", "b2", 100, 20), _row("a3", "b3", 5, 5),
            _row("b1", "b2", 200, 0, "B", "B"), _row("b1", "c1", 100, 2, "B", "C")]
    by_area = lambda r, side: r[f"{side}_area"]  # noqa: E731
    edges = graph.contract(rows, by_area)
    t = health.Thresholds()
    assert health.edge_class(edges[("A", "B")].values, t) == "warning"  # 25 of 1105 by the sum ...
    found = health.classify(rows, by_area, edges, t)
    assert found.edges[("A", "B")] == "danger"  # ... but a2 -> b2 fails 20 %
    assert (found.worst_rows[("A", "B")]["s_name"], found.worst_rows[("A", "B")]["d_name"]) == ("a2", "b2")
    assert found.nodes == {"B": "danger", "C": "warning"}  # A only calls: it is not unhealthy
    assert ("B", "B") not in found.edges


def test_thresholds_come_from_the_environment():
    cfg = load_config(environ={"PHOBOS_WARNING_RATIO": "0.2", "PHOBOS_DANGER_RATIO": "0.5",
                               "PHOBOS_HEALTH_MIN_CONNECTS": "3"})
    assert (cfg["WARNING_RATIO"], cfg["DANGER_RATIO"], cfg["HEALTH_MIN_CONNECTS"]) == (0.2, 0.5, 3)
    with pytest.raises(ValueError, match="PHOBOS_WARNING_RATIO"):
        load_config(environ={"PHOBOS_WARNING_RATIO": "0.5", "PHOBOS_DANGER_RATIO": "0.1"})
    with pytest.raises(ValueError, match="PHOBOS_DANGER_RATIO"):
        load_config(environ={"PHOBOS_DANGER_RATIO": "lots"})


# -- the maps ---------------------------------------------------------------------------------

def test_areas_view_red_edge_and_area(client):
    view = get(client, f"/api/v1/areas?{VIEW}")
    nodes, edges = by_name(view), by_pair(view)
    assert nodes["shop"]["class"] == "danger"  # it holds web -> api
    assert {n for n, d in nodes.items() if d["class"] != "normal"} == {"shop"}
    assert view["metadata"]["health"] == {"warning_ratio": 0.01, "danger_ratio": 0.05, "min_connects": 3,
                                          "warning_handshake_p95_ms": 500.0, "warning_retransmit_ratio": 0.02}
    assert all(c["class"] == "normal" for c in view["connections"])  # web -> api stays inside shop


def test_area_view_edge_node_and_notice(client):
    view = get(client, f"/api/v1/areas/shop?{VIEW}")
    edge = by_pair(view)[("web", "api")]
    assert edge["class"] == "danger"
    assert edge["metadata"]["failure_ratio"] == pytest.approx(0.1)
    assert edge["metadata"]["class"] == "danger"
    assert edge["notices"] == [{"title": "9 of 90 connects failed (10.0%)", "severity": 2}]
    nodes = by_name(view)
    assert nodes["api"]["class"] == "danger" and nodes["web"]["class"] == "area"


def test_edge_notice_names_its_worst_pair():
    """A drawn edge red because of one pair behind it says which pair in its notice."""
    from api.views import vizceral

    worst = _row("a2", "b2", 100, 20)
    c = vizceral.connection("A", "B", {"connects": 1105, "failures": 25, "open": 3}, "open", cls="danger",
                            worst=worst)
    assert c["class"] == "danger"
    assert [n["title"] for n in c["notices"]] == ["25 of 1105 connects failed (2.3%)",
                                                  "worst pair a2 \u2192 b2: 20 of 100 failed (20.0%)"]
    assert {n["severity"] for n in c["notices"]} == {2}


def test_lower_thresholds_move_classes(fixture_store):
    c = client_of(fixture_store, WARNING_RATIO=0.05, DANGER_RATIO=0.2)
    view = get(c, f"/api/v1/areas/shop?{VIEW}")
    assert by_pair(view)[("web", "api")]["class"] == "warning"
    assert by_name(view)["api"]["class"] == "warning"
    assert by_pair(view)[("web", "api")]["notices"][0]["severity"] == 1


def test_thresholds_from_config_reach_the_views(fixture_store):
    quiet = client_of(fixture_store, WARNING_RATIO=0.15, DANGER_RATIO=0.2)
    view = get(quiet, f"/api/v1/areas/shop?{VIEW}")
    assert by_pair(view)[("web", "api")]["class"] == "normal"
    assert by_name(view)["api"]["class"] == "area"
    few = client_of(fixture_store, HEALTH_MIN_CONNECTS=100)  # web -> api made 90 attempts
    assert by_name(get(few, f"/api/v1/areas?{VIEW}"))["shop"]["class"] == "normal"


def test_unhealthy_node_is_never_folded(fixture_store):
    """pay's view keeps its own services first; the failing api, a neighbour, is kept before them."""
    small = client_of(fixture_store, MAX_NODES=3)
    view = get(small, f"/api/v1/areas/pay?{VIEW}")
    nodes = by_name(view)
    assert len(nodes) == 3
    assert nodes["api"]["class"] == "danger"  # what it serves elsewhere (web's connects) counts too
    assert any(n.endswith("more services") for n in nodes)
    healthy = client_of(fixture_store, MAX_NODES=3, HEALTH_MIN_CONNECTS=1000)
    assert "api" not in by_name(get(healthy, f"/api/v1/areas/pay?{VIEW}"))


def test_alerting_node_stays_alerting(fixture_store, client):
    import json

    alert = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "ApiDown", "service": "api"},
                                             "annotations": {}, "startsAt": "2020-01-01T00:00:00Z",
                                             "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "h1"}]}
    c = client_of(fixture_store, BIND_HOST="127.0.0.1")
    response = c.post("/api/v1/alerts", data=json.dumps(alert), content_type="application/json",
                      environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert response.status_code == 200, response.get_data(as_text=True)
    try:
        nodes = by_name(get(c, f"/api/v1/areas/shop?{VIEW}"))
        assert nodes["api"]["class"] == "alert" and nodes["api"]["metadata"]["health"] == "danger"
        problems = get(c, f"/api/v1/problems?{VIEW}")
        assert problems["services"][0]["name"] == "api" and problems["services"][0]["alerts"] == 1
    finally:
        resolved = dict(alert, status="resolved")
        resolved["alerts"] = [dict(alert["alerts"][0], status="resolved", endsAt="2020-01-01T00:01:00Z")]
        c.post("/api/v1/alerts", data=json.dumps(resolved), content_type="application/json",
               environ_base={"REMOTE_ADDR": "127.0.0.1"})


# -- the problems list and the pairs behind an edge ---------------------------------------------

def test_problems_name_the_failing_dependency(client):
    out = get(client, f"/api/v1/problems?{VIEW}")
    assert [(e["source"], e["target"]) for e in out["edges"]] == [("web", "api")]
    edge = out["edges"][0]
    assert edge["class"] == "danger" and edge["source_area"] == "shop" and edge["target_area"] == "shop"
    assert (edge["connects"], edge["failures"], edge["failure_ratio"]) == (90, 9, pytest.approx(0.1))
    assert [s["name"] for s in out["services"]] == ["api"]
    api = out["services"][0]
    assert api["area"] == "shop" and api["failing_clients"] == ["web"] and api["class"] == "danger"
    assert out["meta"]["danger_ratio"] == 0.05 and out["meta"]["min_connects"] == 3
    # A minimum volume above the pair's 90 attempts: nothing ranks.
    assert get(client, f"/api/v1/problems?{VIEW}&min_connects=91")["edges"] == []
    # A time before the data: no problems, no error.
    assert get(client, f"/api/v1/problems?at={fx.T0 - 3600}&window=600")["edges"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "min_connects=-1", "window=1s", "metric=bogus"])
def test_problems_refuse_bad_parameters(client, query):
    body = get(client, f"/api/v1/problems?at={fx.AT}&{query}", status=400)
    assert body["code"] == 400 and body["message"]


def test_edge_pairs_behind_an_area_edge_and_a_service_edge(client):
    out = get(client, f"/api/v1/edges?source=shop&target=pay&level=areas&{VIEW}")
    assert {(p["source"], p["target"]) for p in out["pairs"]} == {("api", "db"), ("api", "ledger")}
    db = next(p for p in out["pairs"] if p["target"] == "db")
    assert db["open"] == pytest.approx(fx.EXPECTED_OPEN[("api", "db")])
    view = by_pair(get(client, f"/api/v1/areas?{VIEW}"))[("shop", "pay")]
    assert sum(p["open"] for p in out["pairs"]) == pytest.approx(view["metadata"]["open"])
    out = get(client, f"/api/v1/edges?source=web&target=api&level=area&{VIEW}")
    assert sum(p["connects"] for p in out["pairs"]) == 90 and sum(p["failures"] for p in out["pairs"]) == 9
    assert {p["source"] for p in out["pairs"]} == {"h-web"}
    assert all(p["class"] == "danger" for p in out["pairs"])
    get(client, f"/api/v1/edges?source=web&level=area&{VIEW}", status=400)
    get(client, f"/api/v1/edges?source=web&target=api&level=planet&{VIEW}", status=400)
