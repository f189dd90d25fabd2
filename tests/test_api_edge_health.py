"""Health beyond failures: slow handshakes and retransmits make an edge yellow, with its figures in every panel.

The figures come from the tracer's record fields (``handshakes``,
``handshake_us_sum``, ``handshake_hist``, ``retransmits``, ``aborts``),
through the resolution stage's tables, to the maps, the problems list, the
pairs behind an edge and the service summary.
"""

from __future__ import annotations

import pytest

import fixtures as fx
from api.app import create_app
from api.config import load_config
from api.ingest.batches import ingest_batch
from api.resolution.stage import Resolver
from api.views import health
from factories import T0, connection
from tracer.records import HANDSHAKE_BUCKETS, format_ts, handshake_bucket

VIEW = f"at={fx.AT}&window={fx.WINDOW}"


def hist(*latencies_us: int) -> list[int]:
    out = [0] * HANDSHAKE_BUCKETS
    for us in latencies_us:
        out[handshake_bucket(us)] += 1
    return out


# -- the rule, without a store ----------------------------------------------------------------

def test_a_slow_handshake_p95_is_a_warning_from_enough_samples():
    t = health.Thresholds(min_connects=3, handshake_p95_ms=500)
    quick = {"connects": 20, "handshakes": 20, "handshake_hist": hist(*[800] * 20)}
    assert health.assess(quick, t) == ("normal", [])
    # 2 of 20 took a lost SYN's second: the p95 is in the 1 s bucket
    slow = {"connects": 20, "handshakes": 20, "handshake_hist": hist(*[800] * 18, 1_010_000, 1_020_000)}
    assert health.assess(slow, t) == ("warning", ["handshake"])
    p95 = health.figures(slow)["handshake_p95_ms"]
    assert 786 <= p95 <= 1049  # the bucket [786, 1049) ms holds it
    # two timed handshakes say nothing
    assert health.assess({"connects": 2, "handshakes": 2, "handshake_hist": hist(2_000_000, 2_000_000)}, t) \
        == ("normal", [])
    # the threshold is the user's
    assert health.assess(slow, health.Thresholds(handshake_p95_ms=2000)) == ("normal", [])


def test_retransmits_are_a_warning_by_their_share_of_the_segments():
    t = health.Thresholds(retransmit_ratio=0.02)
    # 10 connects of 10 segments of data each: 110 segments; 3 retransmitted is 2.7 %
    lossy = {"connects": 10, "bytes": 100 * health.SEGMENT_BYTES, "retransmits": 3}
    assert health.retransmit_ratio(lossy) == pytest.approx(3 / 110)
    assert health.assess(lossy, t) == ("warning", ["retransmits"])
    # the same 3 on a hundred times the data are noise
    assert health.assess({**lossy, "bytes": 10_000 * health.SEGMENT_BYTES}, t) == ("normal", [])


def test_failures_stay_danger_and_name_every_reason_of_a_warning():
    t = health.Thresholds()
    both = {"connects": 100, "failures": 2, "handshakes": 98, "handshake_hist": hist(*[1_000_000] * 98)}
    assert health.assess(both, t) == ("warning", ["failures", "handshake"])
    assert health.assess({**both, "failures": 40}, t) == ("danger", ["failures"])


def test_thresholds_of_the_health_figures_come_from_the_environment():
    cfg = load_config(environ={"PHOBOS_WARNING_HANDSHAKE_P95_MS": "250", "PHOBOS_WARNING_RETRANSMIT_RATIO": "0.1"})
    assert (cfg["WARNING_HANDSHAKE_P95_MS"], cfg["WARNING_RETRANSMIT_RATIO"]) == (250.0, 0.1)
    with pytest.raises(ValueError, match="PHOBOS_WARNING_RETRANSMIT_RATIO"):
        load_config(environ={"PHOBOS_WARNING_RETRANSMIT_RATIO": "2"})
    with pytest.raises(ValueError, match="PHOBOS_WARNING_HANDSHAKE_P95_MS"):
        load_config(environ={"PHOBOS_WARNING_HANDSHAKE_P95_MS": "0"})


# -- through the store and the API ------------------------------------------------------------

#: batch -> ledger (untouched by the fixture's failures): 30 connects whose
#: handshakes mostly took a lost SYN's second, and lossy transfers.
SLOW = dict(host="h-bat", host_ip="10.0.0.7", service="batch", local_ip="10.0.0.7",
            remote_ip="10.0.0.2", remote_port=8080)


def slow_records() -> list[dict]:
    out = []
    for i in range(6, 9):  # after the deploy 10.0.0.2:8080 is ledger's
        out.append(connection(ts=format_ts(T0 + 60 * i + 5), connects=10, closes=10, handshakes=10,
                              handshake_us_sum=8 * 1_020_000 + 2 * 900, handshake_hist=hist(*[1_020_000] * 8, 900, 900),
                              bytes_sent=10 * 20 * 1448, retransmits=9, aborts=1, **SLOW))
    return out


@pytest.fixture
def health_store(store):
    fx.build(store)
    ingest_batch(store, "connections", slow_records(), batch_id="slow")
    return store


def api(store, **config):
    return create_app({"STORE": store, "TESTING": True, **config}).test_client()


def get(client, url):
    response = client.get(url)
    assert response.status_code == 200, (url, response.get_data(as_text=True)[:500])
    return response.get_json()


@pytest.mark.parametrize("resolved", [False, True], ids=["on-the-spot", "by-the-stage"])
def test_a_slow_lossy_edge_is_yellow_with_its_figures_in_every_panel(health_store, resolved):
    if resolved:
        stage = Resolver(health_store, now=lambda: T0 + 6 * 3600)
        stage.run_once(budget_s=120)
        assert stage.pending() == []
    client = api(health_store)
    view = get(client, f"/api/v1/areas/shop?{VIEW}")
    (edge,) = [c for c in view["connections"] if (c["source"], c["target"]) == ("batch", "ledger")]
    meta = edge["metadata"]
    assert (edge["class"], meta["class"], meta["reasons"]) == ("warning", "warning", ["handshake", "retransmits"])
    assert (meta["handshakes"], meta["retransmits"], meta["aborts"]) == (30, 27, 3)
    assert meta["handshake_mean_ms"] == pytest.approx((8 * 1020 + 2 * 0.9) / 10, abs=0.01)
    assert 786 <= meta["handshake_p95_ms"] <= 1049 and 786 <= meta["handshake_p50_ms"] <= 1049
    assert meta["retransmit_ratio"] == pytest.approx(27 / (30 + 30 * 20), rel=1e-4)

    problems = get(client, f"/api/v1/problems?{VIEW}")
    (listed,) = [e for e in problems["edges"] if (e["source"], e["target"]) == ("batch", "ledger")]
    assert listed["class"] == "warning" and listed["reasons"] == ["handshake", "retransmits"]
    assert listed["handshakes"] == 30 and listed["failures"] == 0

    summary = get(client, f"/api/v1/services/batch/summary?{VIEW}")
    (dep,) = [d for d in summary["outbound"] if d["name"] == "ledger"]
    assert (dep["class"], dep["handshakes"], dep["retransmits"]) == ("warning", 30, 27)
    assert summary["health"]["outbound"]["handshakes"] == 30
    assert summary["health"]["outbound"]["retransmits"] == 27

    pairs = get(client, f"/api/v1/edges?source=batch&target=ledger&level=area&{VIEW}")
    assert [(p["source"], p["class"], p["handshakes"]) for p in pairs["pairs"]] == [("h-bat", "warning", 30)]


def test_higher_thresholds_leave_the_slow_edge_normal(health_store):
    client = api(health_store, WARNING_HANDSHAKE_P95_MS=2000.0, WARNING_RETRANSMIT_RATIO=0.5)
    view = get(client, f"/api/v1/areas/shop?{VIEW}")
    (edge,) = [c for c in view["connections"] if (c["source"], c["target"]) == ("batch", "ledger")]
    assert edge["class"] == "normal" and edge["metadata"]["reasons"] == []
    assert view["metadata"]["health"]["warning_handshake_p95_ms"] == 2000.0
