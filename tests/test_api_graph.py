"""The graph views on the hand-built fixture (tests/fixtures.py): exact graphs."""

from __future__ import annotations

import json

import pytest

import fixtures as fx
from api.app import create_app
from api.catalog.lookups import UNASSIGNED
from api.resolution.tcp import Window
from api.views import reads

VIEW = f"at={fx.AT}&window={fx.WINDOW}"


@pytest.fixture(scope="module")
def fixture_store(chdb_dir):
    from api.storage import open_store

    store = open_store(f"chdb://{chdb_dir}?database=api_graph_fx", role="pytest")
    store.migrate()
    fx.build(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
def client(fixture_store):
    app = create_app({"STORE": fixture_store, "TESTING": True})
    return app.test_client()


def get(client, url, status=200):
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    assert response.is_json, url
    return response.get_json()


def edges_of(view):
    return {(c["source"], c["target"]): c for c in view["connections"]}


def nodes_of(view):
    return {n["name"]: n for n in view["nodes"]}


# -- resolution --------------------------------------------------------------

def test_service_edges_are_exact(fixture_store):
    rows = reads.graph_rows(fixture_store, Window.at(fx.AT, fx.WINDOW))
    got = {(r["s_name"], r["d_name"]): r["open"] for r in rows}
    # IP reuse: no web->ledger, no api->api; both ends: web->api counted once.
    assert got == pytest.approx(fx.EXPECTED_OPEN)
    kinds = {(r["s_name"], r["d_name"]): (r["s_kind"], r["d_kind"], r["s_area"], r["d_area"]) for r in rows}
    assert kinds[("ledger", "stripe")] == ("service", "external", "pay", "pay")
    assert kinds[("api", "db")] == ("service", "service", "shop", "pay")
    assert kinds[("web", "INTERNET")] == ("service", "internet", "shop", "INTERNET")
    assert kinds[("INTERNET", "web")] == ("internet", "service", "INTERNET", "shop")
    assert kinds[("web", "redis")][3] == UNASSIGNED


def test_rates_and_failures(fixture_store):
    rows = reads.graph_rows(fixture_store, Window.at(fx.AT, fx.WINDOW))
    web_api = next(r for r in rows if (r["s_name"], r["d_name"]) == ("web", "api"))
    assert web_api["connects"] == 90 and web_api["failures"] == 9
    assert web_api["conn_rate"] == pytest.approx(90 / 600)
    assert web_api["fail_rate"] == pytest.approx(9 / 600)
    internet = next(r for r in rows if r["s_name"] == "INTERNET")
    assert internet["connects"] == 45  # accepts of the inbound records


def test_before_and_after_the_deploy(fixture_store):
    before = reads.graph_rows(fixture_store, Window.at(fx.T0 + 300, 240))
    after = reads.graph_rows(fixture_store, Window.at(fx.T0 + 600, 240))
    pairs = lambda rows: {(r["s_name"], r["d_name"]) for r in rows}  # noqa: E731
    assert ("ledger", "api") not in pairs(before) and ("ledger", "api") in pairs(after)
    assert ("web", "INTERNET") in pairs(before) and ("web", "INTERNET") not in pairs(after)
    for rows in (before, after):
        assert ("web", "ledger") not in pairs(rows) and ("api", "api") not in pairs(rows)


def test_instances_of_a_service(fixture_store):
    rows = reads.graph_rows(fixture_store, Window.at(fx.AT, fx.WINDOW), instances_of="api")
    inst = {(r["s_inst"], r["d_name"]) for r in rows if r["s_name"] == "api"}
    assert inst == {("h-api1", "ledger"), ("h-api2", "ledger"), ("h-api1", "db"), ("h-api2", "db")}
    servers = {(r["s_name"], r["d_inst"]) for r in rows if r["d_name"] == "api"}
    assert servers == {("web", "h-api1"), ("web", "h-api2"), ("ledger", "h-api2")}


# -- views -------------------------------------------------------------------

def test_areas_view(client):
    view = get(client, f"/api/v1/areas?{VIEW}")
    assert view["renderer"] == "global"
    assert set(nodes_of(view)) == {"INTERNET", "shop", "pay", UNASSIGNED}
    edges = edges_of(view)
    assert set(edges) == {("shop", "pay"), ("pay", "shop"), ("shop", "INTERNET"), ("INTERNET", "shop"),
                          ("shop", UNASSIGNED)}
    assert edges[("shop", "pay")]["metrics"]["normal"] == pytest.approx(5.1 + 0.9)
    assert edges[("INTERNET", "shop")]["metrics"]["normal"] == pytest.approx(3.6)
    assert nodes_of(view)["shop"]["metadata"]["internal"] == pytest.approx(1.8 + 0.9)
    assert all(n.get("renderer") == "region" for n in view["nodes"])


def test_areas_view_metrics(client):
    view = get(client, f"/api/v1/areas?{VIEW}&metric=connects")
    shop_pay = edges_of(view)[("shop", "pay")]
    assert shop_pay["metrics"]["danger"] == 0
    view = get(client, f"/api/v1/areas?{VIEW}&metric=failures")
    assert all(c["metrics"]["normal"] == 0 for c in view["connections"])


def test_area_detail_classes(client):
    view = get(client, f"/api/v1/areas/shop?{VIEW}")
    assert view["renderer"] == "region" and view["name"] == "shop"
    nodes = nodes_of(view)
    # api serves web's connects, 10 % of which fail: it is drawn danger, not in its area's green.
    assert {n for n, d in nodes.items() if d["class"] == "area"} == {"web", "batch"}
    assert nodes["api"]["class"] == "danger" and nodes["api"]["metadata"]["health"] == "danger"
    assert {n for n, d in nodes.items() if d["class"] == "other"} == {"INTERNET", "db", "ledger", "redis"}
    edges = edges_of(view)
    assert ("ledger", "stripe") not in edges  # neither end in the area
    assert edges[("web", "api")]["metrics"]["normal"] == pytest.approx(1.8)
    assert edges[("web", "api")]["metrics"]["danger"] == pytest.approx(9 / 600)
    assert edges[("web", "api")]["class"] == "danger"  # 10% of connects fail


def test_datacenters_view(client):
    view = get(client, f"/api/v1/datacenters?{VIEW}")
    assert set(nodes_of(view)) == {"INTERNET", "dc1"}
    edges = edges_of(view)
    assert set(edges) == {("INTERNET", "dc1"), ("dc1", "INTERNET")}
    # dc1 -> INTERNET: the untraced db, stripe and the unknown address
    assert edges[("dc1", "INTERNET")]["metrics"]["normal"] == pytest.approx(5.1 + 0.9 + 0.5)


def test_dc_filter(client):
    view = get(client, f"/api/v1/areas?{VIEW}&dc=nowhere")
    assert view["connections"] == []
    assert get(client, f"/api/v1/areas?{VIEW}&dc=dc1")["connections"]


def test_service_detail(client):
    view = get(client, f"/api/v1/services/api?{VIEW}")
    assert view["renderer"] == "focused"
    nodes = nodes_of(view)
    # Both instances served web's failing connects (h-api1 before the deploy, h-api2 after).
    assert {n for n, d in nodes.items() if d["metadata"].get("kind") == "instance"} == {"h-api1", "h-api2"}
    assert {nodes[n]["class"] for n in ("h-api1", "h-api2")} == {"danger"}
    assert {"web", "ledger", "db"} <= set(nodes)
    assert ("h-api2", "ledger") in edges_of(view) and ("ledger", "h-api2") in edges_of(view)


def test_service_detail_peers_of_its_own_area_are_the_areas(client):
    # web's view: its instance and batch, a service of shop like web, in the area's class; the rest "other".
    nodes = nodes_of(get(client, f"/api/v1/services/web?{VIEW}"))
    assert nodes["h-web"]["class"] == "area" and nodes["batch"]["class"] == "area"
    assert nodes["redis"]["class"] == "other" and nodes["INTERNET"]["class"] == "other"
    assert nodes["api"]["class"] == "danger"  # failing wins over the area's colour
    # ledger's view (area pay): db is pay's too, api is shop's.
    nodes = nodes_of(get(client, f"/api/v1/services/ledger?{VIEW}"))
    assert nodes["stripe"]["class"] == "other"  # an external, though of area pay
    assert nodes["api"]["class"] in ("other", "danger")


def test_long_tail_is_grouped_and_said(fixture_store):
    app = create_app({"STORE": fixture_store, "TESTING": True, "MAX_NODES": 5})
    view = get(app.test_client(), f"/api/v1/areas/shop?{VIEW}")
    nodes = nodes_of(view)
    assert len(nodes) == 5
    assert {"INTERNET", "web", "api", "batch"} <= set(nodes)
    more = next(n for n in nodes if "more" in n)
    assert more == "3 more services"
    assert nodes[more]["metadata"]["grouped"] == ["db", "ledger", "redis"]
    assert "grouped" in view["notices"][0]["title"]
    assert view["metadata"]["grouped"] == 3
    assert ("api", more) in edges_of(view)


def test_summary(client):
    summary = get(client, f"/api/v1/services/web/summary?{VIEW}")
    assert summary["area"] == "shop"
    assert {d["name"] for d in summary["inbound"]} == {"INTERNET", "batch"}
    assert {d["name"] for d in summary["outbound"]} == {"api", "INTERNET", "redis"}
    api = next(d for d in summary["outbound"] if d["name"] == "api")
    assert api["failure_ratio"] == pytest.approx(0.1) and api["open"] == pytest.approx(1.8)
    assert [i["host"] for i in summary["instances"]] == ["h-web"]
    assert summary["instances"][0]["host_ips"] == ["10.0.0.1"]
    assert summary["first_seen"] and summary["last_seen"]
    kinds = {link["kind"] for link in summary["links"]}
    assert kinds == {"oncall", "dashboard"}  # the service's own and its area's
    assert summary["processes"] == ["checkout-flow"]


def test_impact(client):
    impact = get(client, f"/api/v1/services/api/impact?{VIEW}")
    up = {e["name"]: e for e in impact["upstream"]}
    assert set(up) == {"web", "batch", "INTERNET", "ledger"}
    assert up["web"]["hops"] == 1 and up["batch"]["hops"] == 2 and up["INTERNET"]["hops"] == 2
    assert up["web"]["weight"] == pytest.approx(1.8)
    assert up["batch"]["weight"] == pytest.approx(0.9)
    assert {e["name"] for e in impact["downstream"]} == {"ledger", "db", "stripe"}
    assert {a["name"] for a in impact["areas"]} == {"shop", "pay"}  # INTERNET is upstream, but no area
    assert impact["processes"] == [{"name": "checkout-flow", "via": ["ledger", "web"],
                                    "weight": pytest.approx(1.8 + 0.4)}]
    assert impact["cycles"] == [["api", "ledger"]]


def test_impact_of_a_leaf(client):
    impact = get(client, f"/api/v1/services/redis/impact?{VIEW}")
    assert {e["name"] for e in impact["upstream"]} == {"web", "batch", "INTERNET"}
    assert impact["downstream"] == [] and impact["cycles"] == []


def test_diff(client):
    diff = get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.T0 + 600}&window=240")
    assert [(e["source"], e["target"]) for e in diff["new"]] == [("ledger", "api")]
    assert [(e["source"], e["target"]) for e in diff["vanished"]] == [("web", "INTERNET")]
    assert [(e["source"], e["target"]) for e in diff["changed"]] == [("api", "db")]
    assert diff["changed"][0]["change"] == pytest.approx(2.0)
    # a higher threshold hides the change
    diff = get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.T0 + 600}&window=240&min_change=3")
    assert diff["changed"] == []


def test_diff_ranked_by_absolute_change(client):
    diff = get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.T0 + 600}&window=240")
    ranked = diff["ranked"]
    assert sorted((e["source"], e["target"], e["kind"]) for e in ranked) == sorted(
        [("ledger", "api", "new"), ("web", "INTERNET", "vanished"), ("api", "db", "changed")])
    sizes = [abs(e["delta"]) for e in ranked]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] > 0
    assert all(e["delta"] == pytest.approx(e["after"] - e["before"]) for e in ranked)
    assert diff["counts"] == {"new": 1, "vanished": 1, "changed": 1}
    assert {(e["source_area"], e["target_area"]) for e in ranked if e["source"] == "ledger"} == {("pay", "shop")}
    assert len(get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.T0 + 600}&window=240&limit=1")["ranked"]) == 1


@pytest.mark.parametrize("scope, edges", [
    ("area=pay", {("ledger", "api"), ("api", "db")}),      # one end in pay
    ("area=shop", {("ledger", "api"), ("api", "db"), ("web", "INTERNET")}),
    ("service=web", {("web", "INTERNET")}),
    ("service=ledger", {("ledger", "api")}),
])
def test_diff_scoped_to_a_view(client, scope, edges):
    diff = get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.T0 + 600}&window=240&{scope}")
    assert {(e["source"], e["target"]) for e in diff["ranked"]} == edges
    key, value = scope.split("=")
    assert diff["meta"][key] == value


def test_diff_by_area_compares_area_edges(client):
    diff = get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.T0 + 600}&window=240&by=area")
    names = {n for e in diff["ranked"] for n in (e["source"], e["target"])}
    assert names <= {"shop", "pay", "INTERNET", UNASSIGNED}
    # web -> INTERNET vanished, so the shop -> INTERNET area edge did too
    assert ("shop", "INTERNET") in {(e["source"], e["target"]) for e in diff["vanished"]}
    assert diff["meta"]["by"] == "area"
    get(client, f"/api/v1/diff?to={fx.AT}&by=area&area=pay", status=400)
    get(client, f"/api/v1/diff?to={fx.AT}&by=nodes", status=400)


def test_diff_default_from_has_data(client):
    # 24 h before the fixture's end is long before its first record: the
    # default moves to the first window inside the data, so not every edge is new.
    diff = get(client, f"/api/v1/diff?to={fx.AT}&window=240")
    assert diff["meta"]["default_from"] is True
    from tracer.records import format_ts

    first = reads.data_range(client.application.extensions["phobos_store"])[0]
    assert diff["meta"]["from"] == format_ts(first + 240)
    assert diff["counts"]["new"] < 3 and (diff["vanished"] or diff["changed"])
    assert get(client, f"/api/v1/diff?from={fx.T0 + 300}&to={fx.AT}")["meta"]["default_from"] is False


def test_search(client):
    found = get(client, f"/api/v1/search?q=led&at={fx.AT}")
    assert [s["name"] for s in found["services"]] == ["ledger"]
    assert {i["name"] for i in found["instances"]} == {"h-led", "h-led2"}
    found = get(client, f"/api/v1/search?q=10.0.0.5&at={fx.AT}")
    assert [i["ip"] for i in found["ips"]] == ["10.0.0.5"]
    assert found["ips"][0]["service"] == "ledger"
    assert [a["name"] for a in get(client, "/api/v1/search?q=SHO")["areas"]] == ["shop"]


def test_timeline(client):
    tl = get(client, f"/api/v1/timeline?from={fx.T0}&to={fx.T0 + 600}&buckets=10")
    assert tl["bucket"] == 60
    assert len(tl["buckets"]) == 9
    assert tl["range"]["first"] <= tl["from"]


# -- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "/api/v1/areas/nowhere", "/api/v1/services/nothing", "/api/v1/services/nothing/summary",
    "/api/v1/services/nothing/impact", "/api/v1/no-such-thing",
])
def test_unknown_is_404_json(client, url):
    body = get(client, url, 404)
    assert body["code"] == 404 and body["message"]


@pytest.mark.parametrize("query", [
    "at=yesterday", "at=-3x", "at=99999999999999", "window=0", "window=10", "window=40d", "window=abc",
    "metric=bytes", "at=" + "9" * 300,
])
def test_bad_parameters_are_400_json(client, query):
    for url in ("/api/v1/areas", "/api/v1/areas/shop", "/api/v1/services/web",
                "/api/v1/services/web/impact", "/api/v1/datacenters"):
        body = get(client, f"{url}?{query}", 400)
        assert body["code"] == 400 and isinstance(body["message"], str)


@pytest.mark.parametrize("url", [
    "/api/v1/diff?from=now&to=-1h", "/api/v1/diff?min_change=-1", "/api/v1/diff?min_change=nan",
    "/api/v1/search", "/api/v1/search?q=" + "x" * 201, "/api/v1/search?q=a&limit=0",
    "/api/v1/timeline?buckets=0", "/api/v1/timeline?from=now&to=-1d",
])
def test_other_bad_parameters(client, url):
    assert get(client, url, 400)["code"] == 400


def test_wrong_method_is_json(client):
    response = client.delete("/api/v1/areas")
    assert response.status_code == 405 and response.get_json()["code"] == 405


def test_views_are_json_serialisable_vizceral(client):
    for url in ("/api/v1/areas", "/api/v1/areas/shop", "/api/v1/areas/pay", "/api/v1/datacenters",
                "/api/v1/services/api", "/api/v1/services/web"):
        view = get(client, f"{url}?{VIEW}")
        json.dumps(view)
        names = [n["name"] for n in view["nodes"]]
        assert len(names) == len(set(names))
        assert view["maxVolume"] > 0
        for c in view["connections"]:
            assert c["source"] in names and c["target"] in names


def test_internet_and_externals_have_detail_views(client):
    view = get(client, f"/api/v1/services/INTERNET?{VIEW}")
    # as a client: the INTERNET address that called web; as a server: the unknown address web called
    assert {n["name"] for n in view["nodes"] if n["class"] == "area"} == {"198.51.100.7", "192.0.2.50"}
    impact = get(client, f"/api/v1/services/stripe/impact?{VIEW}")
    assert {e["name"] for e in impact["upstream"]} == {"ledger", "api", "web", "batch", "INTERNET"}
