"""The graph model (api/views/graph.py) on plain rows: contraction, impact, cycles, diff, long tail."""

from __future__ import annotations

import pytest

from api.views import graph as g


def row(s, d, open_=1.0, s_kind="service", d_kind="service", s_area="a", d_area="a", connects=10, failures=0):
    return {"s_name": s, "d_name": d, "s_kind": s_kind, "d_kind": d_kind, "s_area": s_area, "d_area": d_area,
            "open": open_, "conn_rate": connects / 60, "fail_rate": failures / 60, "connects": connects,
            "failures": failures, "bytes": 0}


def test_contract_sums_and_drops():
    rows = [row("x", "y", 1, s_area="A", d_area="B"), row("z", "y", 2, s_area="A", d_area="B"),
            row("x", "z", 4, s_area="A", d_area="A")]
    edges = g.contract(rows, lambda r, side: r[f"{side}_area"])
    assert {k: e.values["open"] for k, e in edges.items()} == {("A", "B"): 3.0, ("A", "A"): 4.0}
    edges = g.contract(rows, lambda r, side: None if r[f"{side}_name"] == "z" else r[f"{side}_name"])
    assert set(edges) == {("x", "y")}


def test_service_graph_weights_by_metric():
    rows = [row("x", "y", 2.0, connects=60, failures=6), row("x", "x", 5.0)]
    graph = g.service_graph(rows, "failures")
    assert list(graph.edges) == [("x", "y")]  # self-loops say nothing about dependencies
    assert graph.edges["x", "y"]["weight"] == pytest.approx(0.1)
    assert g.service_graph(rows, "open").edges["x", "y"]["weight"] == 2.0


def test_impact_chain_with_cycle_and_processes():
    # INTERNET -> web -> api -> db ; api <-> ledger ; web -> cdn (external)
    rows = [row("INTERNET", "web", 3, s_kind="internet"), row("web", "api", 2), row("api", "db", 1),
            row("api", "ledger", 1), row("ledger", "api", 0.5), row("web", "cdn", 1, d_kind="external")]
    graph = g.service_graph(rows)
    out = g.impact(graph, "api", {"checkout": ["web"], "reporting": ["db"], "other": ["cdn"]})
    assert [(e["name"], e["hops"]) for e in out["upstream"]] == [("web", 1), ("ledger", 1), ("INTERNET", 2)]
    assert [(e["name"], e["hops"]) for e in out["downstream"]] == [("db", 1), ("ledger", 1)]
    assert [p["name"] for p in out["processes"]] == ["checkout"]
    assert out["cycles"] == [["api", "ledger"]]


def test_impact_does_not_chain_through_internet():
    # web calls the internet; the internet's clients call shop: shop does not depend on web
    rows = [row("web", "INTERNET", 1, d_kind="internet"), row("INTERNET", "shop", 1, s_kind="internet")]
    graph = g.service_graph(rows)
    assert g.impact(graph, "web")["upstream"] == []
    assert [e["name"] for e in g.impact(graph, "web")["downstream"]] == ["INTERNET"]
    assert [e["name"] for e in g.impact(graph, "shop")["upstream"]] == ["INTERNET"]
    assert g.impact(graph, "shop")["downstream"] == []


def test_impact_areas_are_business_areas_only():
    # INTERNET and an external call into shop's web, which calls api: neither is an area that depends on api
    rows = [row("INTERNET", "web", 3, s_kind="internet", s_area="INTERNET", d_area="shop"),
            row("partner", "web", 1, s_kind="external", s_area="partners", d_area="shop"),
            row("web", "api", 2, s_area="shop", d_area="shop"), row("report", "api", 1, s_area="bi", d_area="shop")]
    out = g.impact(g.service_graph(rows), "api")
    assert {e["name"] for e in out["upstream"]} == {"web", "report", "INTERNET", "partner"}  # still upstream ...
    assert [(a["name"], a["services"]) for a in out["areas"]] == [("shop", 1), ("bi", 1)]  # ... but not areas


def test_impact_of_unknown_node_is_empty():
    assert g.impact(g.service_graph([row("a", "b")]), "zzz")["upstream"] == []


def test_cycles_bounded():
    rows = [row(f"n{i}", f"n{j}") for i in range(6) for j in range(6) if i != j]  # complete graph
    found = g.cycles(g.service_graph(rows), through="n0", limit=7)
    assert len(found) == 7 and all(c[0] == "n0" for c in found)
    assert g.cycles(g.service_graph([row("a", "b")])) == []


def test_diff_thresholds():
    before = [row("a", "b", 1.0), row("a", "c", 1.0), row("a", "d", 1.0), row("x", "y", 0.001)]
    after = [row("a", "b", 1.2), row("a", "c", 3.0), row("a", "e", 0.5), row("x", "z", 0.001)]
    out = g.diff(before, after, "open", min_change=0.5, min_volume=0.01)
    assert [(i["source"], i["target"]) for i in out["new"]] == [("a", "e")]
    assert [(i["source"], i["target"]) for i in out["vanished"]] == [("a", "d")]
    assert [(i["source"], i["target"], i["change"]) for i in out["changed"]] == [("a", "c", 2.0)]
    assert g.diff(before, after, "open", min_change=0.1)["changed"][0]["target"] == "c"
    assert len(g.diff(before, after, "open", min_change=0.1)["changed"]) == 2


def test_long_tail():
    volumes = {f"s{i}": float(i) for i in range(10)}
    kept, tail = g.long_tail(volumes, 4, keep=["s0"])
    assert kept == {"s0", "s9", "s8"} and tail == [f"s{i}" for i in range(1, 8)]
    assert g.long_tail(volumes, 10) == (set(volumes), [])
