"""The API on a simulated fleet: deploys that reuse addresses never produce false edges.

The simulator (api/simulation/simulate.py) knows the true service edges of every
epoch of its time line (between two events nothing changes); the resolved
graph of each epoch must be exactly that, whatever addresses deploys moved
or handed to other services.
"""

from __future__ import annotations

import time

import pytest

from api.app import create_app
from api.catalog.lookups import INTERNET
from api.resolution.tcp import Window
from api.views import reads
from conftest import require

try:
    from api.simulation import simulate as sim
except ImportError:  # pragma: no cover - the simulator lives in its own change
    sim = None

# The module's fleet is three simulated hours, ingested and resolved.
pytestmark = pytest.mark.slow

HOURS = 3


@pytest.fixture(scope="module")
def fleet_store(chdb_dir):
    require(sim is not None, "api/simulation/simulate.py is not available")
    from api.storage import open_store

    store = open_store(f"chdb://{chdb_dir}?database=api_sim", role="pytest")
    store.migrate()
    end = int(time.time()) // 3600 * 3600
    cfg = sim.SimConfig(areas=4, services=24, instances=96, start=end - HOURS * 3600, end=end,
                        interval=60, seed=3).check()
    summary = sim.simulate(store, cfg)
    fleet = sim.build_fleet(cfg)
    yield store, fleet, cfg, summary
    store.close()


def _epochs(fleet, cfg):
    for epoch in fleet.epochs:
        start, end = max(epoch.start, cfg.start + cfg.interval), min(epoch.end, cfg.end + cfg.interval)
        if end - start >= 300:
            yield epoch, start, end


def test_the_time_line_has_ip_reuse(fleet_store):
    _, _, _, summary = fleet_store
    kinds = {e["kind"] for e in summary.events}
    assert {"deploy", "ip_reuse"} <= kinds


def test_every_epoch_resolves_to_the_true_edges(fleet_store):
    store, fleet, cfg, _ = fleet_store
    services = set(fleet.svc_name)
    externals = {e["name"] for e in fleet.externals}
    checked = 0
    for epoch, start, end in _epochs(fleet, cfg):
        # records carry the interval end: the epoch's records have ts in [start, end)
        rows = reads.graph_rows(store, Window(start, end))
        internal = {(r["s_name"], r["d_name"]) for r in rows
                    if r["s_name"] in services and r["d_name"] in services}
        truth = set(fleet.edge_names(epoch))
        assert internal - truth == set(), f"false edges in epoch {start}..{end}"
        assert truth - internal == set(), f"missing edges in epoch {start}..{end}"
        for r in rows:
            assert r["s_name"] in services | externals | {INTERNET}
            assert r["d_name"] in services | externals | {INTERNET}
            if r["d_name"] in externals:
                assert r["d_kind"] == "external"
        # INTERNET clients reach the ingress services; untraced clients (not
        # in the catalog) are INTERNET too, and call a few api/db services
        callers_of = {r["d_name"] for r in rows if r["s_name"] == INTERNET}
        assert {fleet.svc_name[i] for i in fleet.ingress} <= callers_of
        ext_called = {(r["s_name"], r["d_name"]) for r in rows if r["d_kind"] == "external"}
        truth_ext = {(fleet.svc_name[c], e["name"]) for e in fleet.externals for c in e["callers"]}
        assert ext_called == truth_ext
        checked += 1
    assert checked >= 3


def test_views_on_the_fleet(fleet_store):
    store, fleet, cfg, _ = fleet_store
    client = create_app({"STORE": store, "TESTING": True}).test_client()
    at = cfg.end
    areas = client.get(f"/api/v1/areas?at={at}").get_json()
    names = {n["name"] for n in areas["nodes"]}
    assert set(fleet.areas) | {INTERNET} <= names
    assert any(c["source"] == INTERNET for c in areas["connections"])
    area = fleet.areas[0]
    region = client.get(f"/api/v1/areas/{area}?at={at}").get_json()
    own = {n["name"] for n in region["nodes"] if n["class"] == "area"}
    assert own == {s for i, s in enumerate(fleet.svc_name) if fleet.areas[int(fleet.svc_area[i])] == area}
    svc = fleet.svc_name[0]
    for url in (f"/api/v1/services/{svc}", f"/api/v1/services/{svc}/summary",
                f"/api/v1/services/{svc}/impact", "/api/v1/datacenters", f"/api/v1/diff?to={at}&from={at - 3600}",
                "/api/v1/timeline", f"/api/v1/search?q={svc[:4]}&at={at}"):
        response = client.get(url if "?" in url else f"{url}?at={at}")
        assert response.status_code == 200, (url, response.get_data(as_text=True)[:300])
    summary = client.get(f"/api/v1/services/{svc}/summary?at={at}").get_json()
    assert summary["instances"] and {link["kind"] for link in summary["links"]} >= {"dashboard", "oncall", "deploy"}
