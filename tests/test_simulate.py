"""The fleet simulator against a real embedded store (chDB).

One store directory for the module (chDB opens one data path per process);
each simulation goes into its own database there.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import signal
import threading
import time

import pytest

from api.simulation import simulate as sim
from api.simulation.fleet import SimConfig, build_fleet
from api.storage import open_store
from factories import BUSY_END

INTERVAL = 60
END = BUSY_END  # the same time of day whenever the tests run
START = END - 2 * 3600
CFG = SimConfig(areas=4, services=24, instances=80, dcs=2, start=START, end=END, interval=INTERVAL, seed=7)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return tmp_path_factory.mktemp("simstore")


@pytest.fixture(scope="module")
def stores(store_path):
    opened = {}

    def get(name: str):
        if name not in opened:
            store = open_store(f"chdb:///{store_path}?database={name}", role="test_simulate")
            store.migrate()
            opened[name] = store
        return opened[name]

    yield get
    for store in opened.values():
        store.close()


@pytest.fixture(scope="module")
def run_a(stores):
    """The reference simulation: seed 7, two hours, into database sim_a."""
    store = stores("sim_a")
    return store, sim.simulate(store, CFG)


def _fingerprint(store, table: str) -> tuple:
    cols = [n for n in store.column_types(table)]
    expr = ", ".join(f"`{c}`" for c in cols)
    return tuple(store.query(f"SELECT count(), groupBitXor(cityHash64({expr})), sum(cityHash64({expr})) "
                             f"FROM {store.db}.{table}")[0])


def _ip(text: str) -> str:
    return f"::ffff:{text}"


# -- the pure model -------------------------------------------------------------

def test_build_fleet_is_deterministic():
    a, b = build_fleet(CFG), build_fleet(CFG)
    assert a.events == b.events
    assert a.catalog_dict() == b.catalog_dict()
    assert (a.p_client == b.p_client).all() and (a.p_server == b.p_server).all()
    assert [(e.start, e.failing, e.pod) for e in a.epochs] == [(e.start, e.failing, e.pod) for e in b.epochs]
    c = build_fleet(SimConfig(**{**CFG.__dict__, "seed": 8}))
    assert c.events != a.events


def test_fleet_shape():
    fleet = build_fleet(CFG)
    assert len(fleet.svc_name) == 24 and fleet.n_instances == 80
    assert len(set(fleet.svc_name)) == 24
    assert set(fleet.inst_dc.tolist()) == {0, 1}
    assert fleet.cycles, "a few deliberate cycles"
    kinds = {e["kind"] for e in fleet.events}
    assert {"deploy", "ip_reuse", "incident", "edge_added", "edge_removed"} <= kinds
    assert len([e for e in fleet.events if e["kind"] == "incident"]) >= 2
    cat = fleet.catalog_dict()
    assert any(a["kind"] == "process" for a in cat["areas"])
    for ext in cat["externals"]:
        assert ipaddress.ip_network(ext["cidrs"][0]).subnet_of(ipaddress.ip_network("203.0.113.0/24"))


@pytest.mark.parametrize("change, message", [
    ({"services": 3}, "at least --areas"),
    ({"instances": 10}, "at least --services"),
    ({"start": END, "end": START}, "before --from"),
    ({"dcs": 0}, "--dcs"),
    ({"interval": 0}, "--interval"),
])
def test_bad_config_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        build_fleet(SimConfig(**{**CFG.__dict__, **change}))


def test_parse_time():
    now = 1_800_000_000
    assert sim.parse_time("now", now) == now
    assert sim.parse_time("-90m", now) == now - 5400
    assert sim.parse_time("-24h", now) == now - 86400
    assert sim.parse_time("2026-01-01T00:00:00Z") == 1_767_225_600
    assert sim.parse_time("2026-01-01T00:00:00") == 1_767_225_600
    with pytest.raises(ValueError, match="not a time"):
        sim.parse_time("yesterday")


def test_cli_reports_bad_input(capsys, store_path):
    args = sim.build_parser().parse_args(
        ["--store", f"chdb:///{store_path}?database=sim_bad", "--areas", "5", "--services", "3"])
    assert sim.run(args) == 2
    assert "--services (3) must be at least --areas (5)" in capsys.readouterr().err
    args = sim.build_parser().parse_args(
        ["--store", f"chdb:///{store_path}?database=sim_bad", "--from", "-1h", "--to", "-2h"])
    assert sim.run(args) == 2
    assert "--to is before --from" in capsys.readouterr().err


def test_progress_bar_is_one_line_when_not_a_tty():
    out = io.StringIO()
    bar = sim.TextProgress(out)
    for done in range(1, 11):
        bar(done, 10, done * 1000)
    assert out.getvalue() == ""
    bar.close()
    line = out.getvalue()
    assert line.count("\n") == 1 and "100.0%" in line and "10/10 intervals" in line
    quiet = io.StringIO()
    bar = sim.TextProgress(quiet, quiet=True)
    bar(1, 1, 1)
    bar.close()
    assert quiet.getvalue() == ""


# -- against the store ------------------------------------------------------------

@pytest.mark.slow
def test_same_seed_same_data(run_a, stores):
    store_a, summary_a = run_a
    store_b = stores("sim_b")
    summary_b = sim.simulate(store_b, CFG)
    assert summary_a.records == summary_b.records
    assert summary_a.events == summary_b.events
    assert summary_a.records["connections"] > 10_000
    assert summary_a.records["listeners"] == 80 * 120
    for table in ("connections", "listeners"):
        assert _fingerprint(store_a, table) == _fingerprint(store_b, table)
    store_c = stores("sim_c")
    sim.simulate(store_c, SimConfig(**{**CFG.__dict__, "seed": 8}), catalog=False)
    assert _fingerprint(store_a, "connections") != _fingerprint(store_c, "connections")


@pytest.mark.slow
def test_data_does_not_depend_on_batching(run_a, stores, monkeypatch):
    store_a, _ = run_a
    monkeypatch.setattr(sim, "CHUNK_ROWS", 2000)  # many small batches instead of one per epoch
    store_d = stores("sim_d")
    sim.simulate(store_d, CFG, catalog=False)
    for table in ("connections", "listeners"):
        assert _fingerprint(store_a, table) == _fingerprint(store_d, table)


@pytest.mark.slow
def test_rerun_stores_nothing_twice(run_a):
    store, summary = run_a
    before = {t: _fingerprint(store, t) for t in ("connections", "listeners")}
    rollup = store.query(f"SELECT sum(records) FROM {store.db}.edges_1m")[0][0]
    again = sim.simulate(store, CFG)
    assert again.records == summary.records  # written again ...
    for table, fp in before.items():  # ... but deduplicated
        assert _fingerprint(store, table) == fp
    assert store.query(f"SELECT sum(records) FROM {store.db}.edges_1m")[0][0] == rollup == before["connections"][0]
    assert again.catalog_version == summary.catalog_version  # same catalog: no new version


def test_timestamps_on_the_interval_grid(run_a):
    store, _ = run_a
    rows = store.query(
        f"SELECT min(toUnixTimestamp(ts)), max(toUnixTimestamp(ts)), countIf(toUnixTimestamp(ts) % {INTERVAL} != 0), "
        f"uniqExact(ts) FROM {store.db}.connections")
    assert rows[0] == (START + INTERVAL, END, 0, 120)


def test_both_ends_agree(run_a):
    """connects - failures at the client == accepts at the server, per pair and interval."""
    store, _ = run_a
    db = store.db
    rows = store.query(f"""
        SELECT count(), countIf(o.established != i.accepts OR o.closes != i.closes OR o.open != i.open
                                OR o.dur != i.dur OR o.sent != i.received)
        FROM (SELECT ts, local_ip AS cip, remote_ip AS sip, remote_port AS port,
                     sum(connects - failures) AS established, sum(closes) AS closes, sum(open) AS open,
                     sum(duration_ms_sum) AS dur, sum(bytes_sent) AS sent
              FROM {db}.connections WHERE direction = 'outbound' GROUP BY ts, cip, sip, port) AS o
        INNER JOIN
             (SELECT ts, remote_ip AS cip, local_ip AS sip, local_port AS port,
                     sum(accepts) AS accepts, sum(closes) AS closes, sum(open) AS open,
                     sum(duration_ms_sum) AS dur, sum(bytes_received) AS received
              FROM {db}.connections WHERE direction = 'inbound' GROUP BY ts, cip, sip, port) AS i
        USING (ts, cip, sip, port)""")
    matched, mismatched = rows[0]
    assert matched > 5000 and mismatched == 0
    # Unmatched outbound records go to external dependencies only ...
    unmatched_out = store.query(f"""
        SELECT DISTINCT IPv6NumToString(remote_ip) FROM {db}.connections AS c
        WHERE direction = 'outbound' AND (ts, local_ip, remote_ip, remote_port) NOT IN
              (SELECT ts, remote_ip, local_ip, local_port FROM {db}.connections WHERE direction = 'inbound')""")
    ext = ipaddress.ip_network("203.0.113.0/26")
    assert unmatched_out and all(ipaddress.ip_address(ip[0]).ipv4_mapped in ext for ip in unmatched_out)
    # ... unmatched inbound ones come from the INTERNET or untraced clients.
    unmatched_in = store.query(f"""
        SELECT DISTINCT IPv6NumToString(remote_ip) FROM {db}.connections
        WHERE direction = 'inbound' AND (ts, remote_ip, local_ip, local_port) NOT IN
              (SELECT ts, local_ip, remote_ip, remote_port FROM {db}.connections WHERE direction = 'outbound')""")
    nets = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "203.0.113.128/25", "10.250.0.0/24")]
    addrs = [ipaddress.ip_address(ip[0]).ipv4_mapped for ip in unmatched_in]
    assert any(a in nets[0] or a in nets[1] for a in addrs), "INTERNET clients"
    assert any(a in nets[2] for a in addrs), "untraced clients"
    assert all(any(a in n for n in nets) for a in addrs)


def test_pooled_and_short_lived_connections(run_a):
    store, _ = run_a
    rows = dict((r[0], r[1:]) for r in store.query(f"""
        SELECT remote_port, avg(open), avg(connects) FROM {store.db}.connections
        WHERE direction = 'outbound' AND failures = 0 AND remote_port IN (5432, 8080) GROUP BY remote_port"""))
    pooled_open, pooled_connects = rows[5432]
    short_open, short_connects = rows[8080]
    assert pooled_open > 2 and pooled_connects < 1  # long-lived pool, rare reconnects
    assert short_connects > 5 * pooled_connects and short_open < pooled_open  # many short ones


def test_ip_reuse_shows_in_listeners(run_a):
    store, summary = run_a
    reuses = [e for e in summary.events if e["kind"] == "ip_reuse"]
    assert reuses
    for e in reuses:
        spans = store.query(f"""
            SELECT service, toUnixTimestamp(min(ts)), toUnixTimestamp(max(ts)) FROM {store.db}.listeners
            WHERE ip = toIPv6({{ip:String}}) GROUP BY service ORDER BY 2""", {"ip": _ip(e["ip"])})
        by_service = {s: (lo, hi) for s, lo, hi in spans}
        assert e["old_service"] != e["new_service"]
        old, new = by_service[e["old_service"]], by_service[e["new_service"]]
        assert old[1] == e["old_last_ts"] < e["ts"] == new[0]  # disjoint spans, different services


def test_deploys_move_instances(run_a):
    store, summary = run_a
    deploys = [e for e in summary.events if e["kind"] == "deploy"]
    assert len(deploys) >= 2
    for e in deploys:
        for m in e["moved"]:
            assert m["ip_old"] != m["ip_new"] and m["pod_old"] != m["pod_new"]
            last_old, first_new = store.query(f"""
                SELECT maxIf(toUnixTimestamp(ts), pod = {{old:String}}), minIf(toUnixTimestamp(ts), pod = {{new:String}})
                FROM {store.db}.listeners WHERE service = {{svc:String}}""",
                {"old": m["pod_old"], "new": m["pod_new"], "svc": e["service"]})[0]
            assert last_old == e["ts"] - INTERVAL and first_new == e["ts"]


def _service_edges(store) -> dict[tuple[str, str], tuple[int, int]]:
    """(client, server) -> first and last ts, resolving remote ip:port through listeners at ts."""
    rows = store.query(f"""
        SELECT c.service, l.service, toUnixTimestamp(min(c.ts)), toUnixTimestamp(max(c.ts))
        FROM {store.db}.connections AS c
        INNER JOIN {store.db}.listeners AS l ON c.remote_ip = l.ip AND c.remote_port = l.port AND c.ts = l.ts
        WHERE c.direction = 'outbound' GROUP BY 1, 2""")
    return {(c, s): (lo, hi) for c, s, lo, hi in rows}


def test_deploys_add_and_remove_edges(run_a):
    store, summary = run_a
    edges = _service_edges(store)
    added = [e for e in summary.events if e["kind"] == "edge_added"]
    removed = [e for e in summary.events if e["kind"] == "edge_removed"]
    assert added and removed
    for e in added:
        assert edges[(e["client"], e["server"])][0] == e["ts"]
    for e in removed:
        assert edges[(e["client"], e["server"])][1] == e["ts"] - INTERVAL
    fleet = build_fleet(CFG)
    assert set(edges) == set(fleet.edge_names())


def test_incidents_spike_failures(run_a):
    store, summary = run_a
    incidents = [e for e in summary.events if e["kind"] == "incident"]
    assert len(incidents) >= 2
    inside = " OR ".join(f"(toUnixTimestamp(c.ts) >= {e['ts']} AND toUnixTimestamp(c.ts) < {e['end']})"
                         for e in incidents)
    assert store.query(f"SELECT sum(failures) FROM {store.db}.connections AS c WHERE NOT ({inside})")[0][0] == 0
    for e in incidents:
        rows = store.query(f"""
            SELECT l.service, sum(c.failures), sum(c.connects)
            FROM {store.db}.connections AS c
            INNER JOIN {store.db}.listeners AS l ON c.remote_ip = l.ip AND c.remote_port = l.port AND c.ts = l.ts
            WHERE c.direction = 'outbound' AND toUnixTimestamp(c.ts) >= {e['ts']}
              AND toUnixTimestamp(c.ts) < {e['end']} AND c.failures > 0
            GROUP BY 1""")
        assert [r[0] for r in rows] == [e["service"]]
        assert rows[0][1] > 0.3 * rows[0][2]


def test_catalog_matches_the_records(run_a):
    store, summary = run_a
    from api.catalog.versions import read_catalog

    assert summary.catalog_version is not None
    catalog = read_catalog(store)
    services = {s for (s,) in store.query(f"SELECT DISTINCT service FROM {store.db}.listeners")}
    assert {s.name for s in catalog.services} == services
    assert any(a.kind == "process" for a in catalog.areas)
    outbound_ext = store.query(f"""
        SELECT DISTINCT IPv6NumToString(remote_ip), remote_port FROM {store.db}.connections
        WHERE direction = 'outbound' AND isIPAddressInRange(IPv6NumToString(remote_ip), '::ffff:203.0.113.0/122')""")
    assert outbound_ext
    for ip, port in outbound_ext:
        assert catalog.match_external(ip=ip, port=port) is not None


@pytest.mark.slow
def test_cli_writes_catalog_and_events(store_path, tmp_path, capsys):
    from tracer.catalog import load_catalog

    cat, events = tmp_path / "catalog.yaml", tmp_path / "events.json"
    code = sim.main(["--store", f"chdb:///{store_path}?database=sim_cli", "--areas", "2", "--services", "8",
                     "--instances", "20", "--from", "-30m", "--seed", "3", "--catalog-out", str(cat),
                     "--events-out", str(events)])
    assert code == 0
    out = capsys.readouterr().out
    assert "simulated" in out and "events:" in out
    assert len(load_catalog(cat).services) == 8
    assert {e["kind"] for e in json.loads(events.read_text())} >= {"deploy", "incident"}


@pytest.mark.slow
def test_live_mode_stops_cleanly_on_sigterm(store_path, stores):
    args = sim.build_parser().parse_args(
        ["--store", f"chdb:///{store_path}?database=sim_live", "--areas", "1", "--services", "2",
         "--instances", "3", "--from", "now", "--to", "now", "--interval", "1", "--live", "--quiet",
         "--no-catalog"])
    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    try:
        assert sim.run(args) == 0
    finally:
        timer.cancel()
    assert time.monotonic() - started < 6
    store = stores("sim_live")
    seconds = store.query(f"SELECT uniqExact(ts), count() FROM {store.db}.listeners")[0]
    assert seconds[0] >= 1 and seconds[1] == 3 * seconds[0]


def test_handshakes_are_timed_and_slow_only_into_a_failing_service(run_a):
    from tracer.records import handshake_quantile

    store, summary = run_a
    db = store.db
    # every connect that got through was timed, at the client only
    timed, established, inbound = store.query(
        f"SELECT sumIf(handshakes, direction = 'outbound'), sumIf(connects - failures, direction = 'outbound'), "
        f"sumIf(handshakes, direction = 'inbound') FROM {db}.connections")[0]
    assert timed == established > 0 and inbound == 0
    incidents = [e for e in summary.events if e["kind"] == "incident"]
    inside = " OR ".join(f"(toUnixTimestamp(ts) >= {e['ts']} AND toUnixTimestamp(ts) < {e['end']})" for e in incidents)
    quiet = store.query(f"SELECT sumForEachMerge(handshake_hist), sum(retransmits) FROM {db}.edges_1m "
                        f"WHERE NOT ({inside})")[0]
    assert handshake_quantile(quiet[0], 0.95) < 10_000 and quiet[1] == 0
    # into the failing service a share of the connects lost their first SYN: a second, and a retransmit
    for e in incidents:
        hist, retransmits = store.query(
            f"SELECT sumForEachMerge(c.handshake_hist), sum(c.retransmits) FROM {db}.edges_1m AS c "
            f"INNER JOIN (SELECT DISTINCT ip, port FROM {db}.listeners WHERE service = {{s:String}}) AS l "
            f"ON c.remote_ip = l.ip AND c.remote_port = l.port "
            f"WHERE c.direction = 'outbound' AND toUnixTimestamp(c.ts) >= {e['ts']} "
            f"AND toUnixTimestamp(c.ts) < {e['end']}", {"s": e["service"]})[0]
        assert handshake_quantile(hist, 0.95) >= 1_000_000 and retransmits > 0
