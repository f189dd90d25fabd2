"""The resolution stage (api/resolution/stage.py) against real chDB: minutes resolved once,
late and replayed data, IP reuse, both ends, listeners that arrive late, catalog changes.

The hand-built fleet of fixtures.py has a known exact graph; every
test here compares what views read from the resolved tables with that graph
and with resolving the raw rows afresh (``graph_rows(resolved=False)``).
"""

from __future__ import annotations

import time

import pytest

import fixtures as fx
from api.catalog.lookups import INTERNET
from api.catalog.versions import load_into_store
from api.ingest.batches import ingest_batch
from api.resolution.stage import Resolver, _runs
from api.resolution.tcp import Window
from api.views import reads
from factories import T0, connection, listener
from tracer.catalog import parse_catalog
from tracer.records import format_ts

LATER = T0 + 6 * 3600  # every minute of the fixture has settled by then


def resolver(store, **kw) -> Resolver:
    return Resolver(store, now=lambda: LATER, **kw)


def resolve_all(store) -> int:
    r = resolver(store)
    done = r.run_once(budget_s=120)
    assert r.pending() == []
    return done


def views(store) -> list[tuple[Window, dict]]:
    out = []
    for at, window in ((fx.AT, fx.WINDOW), (T0 + 300, 240), (T0 + 600, 300)):
        win = Window.at(at, window)
        out += [(win, {}), (win, {"instances_of": "api"}), (win, {"touching": "web"}), (win, {"dc": "dc1"})]
    return out


def assert_same_as_fresh(store) -> None:
    for win, options in views(store):
        stored = reads.graph_rows(store, win, **options)
        assert reads.resolved_until(store, win) == win.end, "the view should read resolved rows only"
        assert stored == reads.graph_rows(store, win, resolved=False, **options), (win, options)


@pytest.mark.slow
def test_the_fixture_resolves_to_its_known_graph(store):
    fx.build(store)
    assert resolve_all(store) == 9
    rows = reads.graph_rows(store, Window.at(fx.AT, fx.WINDOW))
    # IP reuse: no web->ledger, no api->api; both ends: web->api once.
    assert {(r["s_name"], r["d_name"]): r["open"] for r in rows} == pytest.approx(fx.EXPECTED_OPEN)
    assert_same_as_fresh(store)
    # far fewer resolved rows than raw ones, and nothing left to do
    assert resolver(store).run_once() == 0


@pytest.mark.slow
def test_late_batches_give_the_graph_of_a_fresh_resolution(store):
    fx.build(store)
    resolve_all(store)
    # minutes later: more connections of a resolved minute, a new edge, a new client
    late = [connection(ts=format_ts(T0 + 180), host="h-web", host_ip="10.0.0.1", service="web",
                       local_ip="10.0.0.1", remote_ip="10.0.0.2", remote_port=8080, connects=7, open=2),
            connection(ts=format_ts(T0 + 240), host="h-bat", host_ip="10.0.0.7", service="batch",
                       local_ip="10.0.0.7", remote_ip="192.0.2.99", remote_port=443, connects=3)]
    ingest_batch(store, "connections", late, batch_id="late-1")
    r = resolver(store)
    assert r.pending() == [T0 + 240, T0 + 180]
    r.run_once()
    assert_same_as_fresh(store)
    win = Window.at(T0 + 300, 240)
    edges = {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, win)}
    fresh = {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, win, resolved=False)}
    assert edges[("batch", "INTERNET")]["connects"] == fresh[("batch", "INTERNET")]["connects"] >= 3
    # a replay of the late batch changes nothing and gives no work
    ingest_batch(store, "connections", late, batch_id="late-1")
    assert r.pending() == []
    assert {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, win)} == edges


def test_a_client_before_its_servers_listener_is_resolved_again_when_the_listener_arrives(store):
    ts = format_ts(T0 + 120)
    ingest_batch(store, "connections", [connection(ts=ts, host="h-c", service="client", remote_ip="10.7.0.9",
                                                   remote_port=9000, connects=4)])
    r = resolver(store)
    r.run_once()
    win = Window.at(T0 + 180, 120)
    assert [(e["d_kind"], e["d_name"]) for e in reads.graph_rows(store, win)] == [("internet", INTERNET)]
    # the server's host reports its listener a few minutes late
    ingest_batch(store, "listeners", [listener(ts=ts, host="h-s", ip="10.7.0.9", port=9000, service="server")])
    assert r.pending() == [T0 + 120]  # the minute of the listener record
    r.run_once()
    rows = reads.graph_rows(store, win)
    assert [(e["d_kind"], e["d_name"], e["connects"]) for e in rows] == [("service", "server", 4)]
    assert rows == reads.graph_rows(store, win, resolved=False)


@pytest.mark.parametrize("listen_ip", ["10.7.0.9", "::"])
def test_an_address_handed_to_another_service_within_a_minute_is_resolved_per_interval(store, listen_ip):
    """A deploy: the old owner stops listening and the new one takes the
    address and port seconds later, inside one minute. The minute's rollup
    sums connections to both, so it is resolved from the raw records, each
    as of its own interval - with the stage and on the spot alike."""
    minute = T0 + 120
    ingest_batch(store, "listeners", [
        listener(ts=format_ts(minute + s), host="h-s", ip=listen_ip, port=9000, service="ledger") for s in (0, 10, 20)
    ] + [listener(ts=format_ts(minute + s), host="h-s", ip=listen_ip, port=9000, service="billing") for s in (40, 50)])
    ingest_batch(store, "connections", [
        connection(ts=format_ts(minute + 10), host="h-c", service="batch", remote_ip="10.7.0.9", remote_port=9000,
                   connects=5, closes=5),
        connection(ts=format_ts(minute + 20), host="h-c", service="batch", remote_ip="10.7.0.9", remote_port=9000,
                   connects=2, closes=2),
        connection(ts=format_ts(minute + 50), host="h-c", service="batch", remote_ip="10.7.0.9", remote_port=9000,
                   connects=3, closes=3),
    ])
    def accepted(at: int, n: int) -> None:
        if listen_ip == "::":  # a wildcard listener is found where its host accepted
            ingest_batch(store, "connections", [connection(
                ts=format_ts(at), host="h-s", service="billing", direction="inbound", local_ip="10.7.0.9",
                local_port=9000, remote_ip="10.0.0.1", remote_port=0, connects=0, accepts=n, closes=n)])

    accepted(minute + 50, 3)
    win = Window.at(minute + 60, 60)
    fresh = {(e["s_name"], e["d_name"]): e["connects"] for e in reads.graph_rows(store, win, resolved=False)}
    assert fresh == {("batch", "ledger"): 7, ("batch", "billing"): 3}
    resolve_all(store)
    assert reads.resolved_until(store, win) == win.end
    assert {(e["s_name"], e["d_name"]): e["connects"] for e in reads.graph_rows(store, win)} == fresh
    # the next minute has one owner: the rollup resolves it as before
    ingest_batch(store, "connections", [connection(ts=format_ts(minute + 70), host="h-c", service="batch",
                                                   remote_ip="10.7.0.9", remote_port=9000, connects=4)])
    ingest_batch(store, "listeners", [listener(ts=format_ts(minute + 70), host="h-s", ip=listen_ip, port=9000,
                                               service="billing")])
    accepted(minute + 70, 4)
    later = Window.at(minute + 120, 60)
    assert [(e["d_name"], e["connects"]) for e in reads.graph_rows(store, later, resolved=False)] == [("billing", 4)]


def test_a_catalog_change_shows_without_resolving_again(store):
    fx.build(store)
    resolve_all(store)
    win = Window.at(fx.AT, fx.WINDOW)
    before = {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, win)}
    assert before[("ledger", "stripe")]["d_kind"] == "external"
    assert before[("web", "INTERNET")]["d_kind"] == "internet"
    # api moves to another area, stripe is renamed, and 192.0.2.0/24 becomes a known external
    moved = (fx.CATALOG.replace("{name: api, area: shop", "{name: api, area: pay")
             .replace("{name: stripe,", "{name: stripe-payments,")
             + "  - {name: docs, cidrs: [192.0.2.0/24]}\n")
    assert moved.count("area: pay") == fx.CATALOG.count("area: pay") + 1
    load_into_store(store, parse_catalog(moved), source="test")
    assert resolver(store).pending() == []  # nothing to resolve again ...
    after = {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, win)}
    assert after[("api", "db")]["s_area"] == "pay"  # ... and the view shows the new catalog
    assert ("ledger", "stripe-payments") in after and ("ledger", "stripe") not in after
    assert after[("web", "docs")]["d_kind"] == "external"
    assert after == {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, win, resolved=False)}


def test_views_read_beside_the_window_state_what_they_would_read_after_it(store):
    """A view reads its rows beside the window's state, guessing that the stage has resolved the
    window in the catalog it last saw: where the guess is wrong - minutes not resolved yet, a new
    catalog version, calls where the last window had none - it reads them again, so every view
    is what a fresh resolution of the window gives."""
    from api.app import create_app
    from api.views import context
    from api.views.params import ViewParams

    fx.build(store)
    client = create_app({"STORE": store, "TESTING": True, "CACHE_SECONDS": 0}).test_client()
    win = Window.at(fx.AT, fx.WINDOW)
    assert win.end < time.time() - context.LIVE_EDGE_S  # a window the guess is made for

    def fresh() -> dict:
        return {(r["s_name"], r["d_name"]): r["open"] for r in reads.graph_rows(store, win, resolved=False)}

    def view_rows() -> list[dict]:
        ctx = context.ViewContext(store, client.application.extensions["phobos_cache"])  # one per request
        return ctx.rows(ViewParams.of(fx.AT, fx.WINDOW, "open", None))

    def viewed() -> dict:
        return {(r["s_name"], r["d_name"]): r["open"] for r in view_rows()}

    client.get(f"/api/v1/areas?at={fx.AT}&window={fx.WINDOW}")  # the catalog is seen: guesses start
    Resolver(store, now=lambda: T0 + 5 * 60 + 90).run_once()  # only the window's first minutes resolved
    assert reads.resolved_until(store, win) < win.end
    assert viewed() == pytest.approx(fresh())
    resolve_all(store)
    assert viewed() == pytest.approx(fresh())  # the guess holds now
    load_into_store(store, parse_catalog(fx.CATALOG.replace("{name: api, area: shop", "{name: api, area: pay")),
                    source="new version")
    areas = {(r["s_name"], r["s_area"]) for r in view_rows()}
    assert ("api", "pay") in areas and ("api", "shop") not in areas  # not the version guessed


def test_minutes_the_stage_has_not_reached_are_resolved_when_read(store):
    """The live edge of a view: a minute not yet settled is shown, resolved on the spot."""
    fx.build(store)
    early = Resolver(store, now=lambda: T0 + 5 * 60 + 90)  # minutes up to T0+240 have settled
    early.run_once()
    win = Window.at(fx.AT, fx.WINDOW)
    assert reads.resolved_until(store, win) == T0 + 300
    rows = reads.graph_rows(store, win)
    assert {(r["s_name"], r["d_name"]): r["open"] for r in rows} == pytest.approx(fx.EXPECTED_OPEN)


def test_a_second_stage_stands_by_while_the_first_holds_the_lease(store):
    fx.build(store)
    first, second = resolver(store, lease=True), resolver(store, lease=True)
    assert first.run_once() == 9
    assert second.run_once() == 0 and second.progress.standing_by
    assert first.run_once() == 0 and not first.progress.standing_by


def test_runs_of_consecutive_minutes():
    assert _runs([0, 60, 120, 300, 360], batch=2) == [(0, 60), (120, 120), (300, 360)]
    assert _runs([], batch=5) == []


def test_ingest_keeps_cached_views_of_windows_its_records_miss():
    from api.views.cache import ResultCache

    cache = ResultCache(300)
    calls = []
    for key, end in (("closed", T0 + 600), ("live", T0 + 7200), ("no window", None)):
        cache.get(key, lambda k=key: calls.append(k) or k, end)
    cache.forget_from(T0 + 3600)  # records of an hour after the closed window
    for key, end in (("closed", T0 + 600), ("live", T0 + 7200), ("no window", None)):
        cache.get(key, lambda k=key: calls.append(k) or k, end)
    assert calls == ["closed", "live", "no window", "live", "no window"]
    cache.forget_from(T0 + 60)  # a late record inside the closed window reaches it too
    cache.get("closed", lambda: calls.append("closed again"), T0 + 600)
    assert calls[-1] == "closed again"


def test_the_stage_runs_in_the_serving_process_and_reports_progress(store):
    import time

    from api.app import create_app, start_resolution

    fx.build(store)
    app = create_app({"STORE": store, "TESTING": True})
    resolver = start_resolution(app, store)
    try:
        deadline = time.monotonic() + 60
        while resolver.progress.resolved_minutes < 9 and time.monotonic() < deadline:
            time.sleep(0.2)
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert "phobos_resolution_minutes_total 9" in text and "phobos_resolution_pending_minutes 0" in text
        assert app.test_client().get("/readyz").get_json() == {"status": "ready"}  # no backlog left
    finally:
        resolver.stop()
    assert not resolver.progress.running


def test_the_minute_being_written_shows_in_live_views(store):
    """`phobos up` in its first minute: records of the current minute are drawn at once."""
    import time

    from api.app import create_app

    now = int(time.time())
    if now % 60 < 2:  # the minute has just begun: nothing of it could have been reported yet
        time.sleep(2)
        now = int(time.time())
    ts = format_ts(now - 1)
    ingest_batch(store, "listeners", [listener(ts=ts, host="h-s", ip="10.8.0.1", port=7000, service="fresh-db")])
    ingest_batch(store, "connections", [connection(ts=ts, host="h-c", service="fresh-app", remote_ip="10.8.0.1",
                                                   remote_port=7000, connects=2, open=1)])
    live = Window.at(now, 300, live=True)  # the same minute as the records
    assert live.end == now and live.start % 60 == 0
    assert [(r["s_name"], r["d_name"]) for r in reads.graph_rows(store, live)] == [("fresh-app", "fresh-db")]
    assert reads.graph_rows(store, Window.at(now, 300)) == []  # a past view keeps whole minutes
    view = create_app({"STORE": store, "TESTING": True}).test_client().get("/api/v1/areas/unassigned").get_json()
    assert {"fresh-app", "fresh-db"} <= {n["name"] for n in view["nodes"]}


def test_window_state_reads_the_minute_book_as_the_four_tables_say(store, tmp_path):
    """minute_book, which the views read for where the stage's rows end, says what the stage's
    four bookkeeping tables say: back-filled for a store from before it, then kept by its views
    through marks, resolution, late rows and spans."""
    import shutil

    from api.storage import open_store
    from api.storage.migrations import SQL_DIR
    from api.ingest.spans import insert_spans, span_rows
    from test_zipkin import zipkin

    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted(SQL_DIR.glob("00*.sql")):  # every file before 010
        shutil.copy(path, older)
    s = open_store(f"chdb://{store.url.path}?database={store.db}_book", role="pytest")
    try:
        s.migrate(directory=older)
        fx.build(s)
        r = resolver(s)
        r.resolve(r.pending()[:4])  # some minutes resolved, the rest pending
        s.migrate()  # adds minute_book and back-fills it from the four tables

        def from_the_four(win: Window) -> tuple[int, int]:
            db = s.db
            rng = f"ts >= toDateTime({win.start}, 'UTC') AND ts < toDateTime({win.end}, 'UTC')"
            marked = {t for (t,) in s.query(f"SELECT toUInt32(ts) FROM {db}.minute_marks WHERE {rng} AND records > 0")}
            done = {t for (t,) in s.query(f"SELECT toUInt32(ts) FROM {db}.resolved_minutes WHERE {rng}")}
            spans = {t for (t,) in s.query(f"SELECT toUInt32(ts) FROM {db}.span_marks WHERE {rng} AND spans > 0")}
            linked = {t for (t,) in s.query(f"SELECT toUInt32(ts) FROM {db}.resolved_call_minutes WHERE {rng}")}

            def split(pending: set[int]) -> int:
                return win.end if not pending else max(win.start, min(pending) // win.bucket * win.bucket)
            return split(marked - done), split(spans - linked)

        def check() -> None:
            for at in range(T0, fx.AT + 600, 120):
                for length in (120, 600, 3600):
                    win = Window.at(at, length)
                    state = reads.window_state(s, win)
                    assert (state.split, state.calls_split) == from_the_four(win), (at, length)

        check()
        assert s.query(f"SELECT count() FROM {s.db}.minute_book")[0][0] > 0
        r.run_once()  # the rest resolved: the views' marks follow
        check()
        ingest_batch(s, "connections", [connection(ts=format_ts(fx.AT + 420), service="late")])  # a new minute
        check()
        s.migrate(span_ttl_hours=48)  # the spans are T0's, about six hours old
        insert_spans(s, span_rows([zipkin("a1", "web", "CLIENT", at=fx.AT - 200),
                                   zipkin("b1", "api", "SERVER", parent="a1", at=fx.AT - 199)]), "book")
        check()  # spans: minutes to link
        r.run_once()
        check()
    finally:
        s.close()


def test_service_pairs_are_the_service_rollups_without_datacenters(store, tmp_path):
    """resolved_pairs_1m/_1h, which the views without a dc read, sum to resolved_svc_1m/_1h with the
    datacenters summed away: back-filled for a store resolved before them, then fed by their
    views through resolution, late rows and a minute resolved again."""
    import shutil

    from api.storage import open_store
    from api.storage.migrations import SQL_DIR

    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted(SQL_DIR.glob("0*.sql")):
        if path.name < "011":
            shutil.copy(path, older)
    s = open_store(f"chdb://{store.url.path}?database={store.db}_pairs", role="pytest")
    keys = "toUInt32(ts), toString(s_kind), s_name, s_addr, toString(d_kind), d_name, d_addr, d_port"
    sums = ("sum(n), sum(open_seconds), sum(connects), sum(failures), sum(bytes), sum(handshakes), "
            "sum(handshake_us_sum), sumForEachMerge(handshake_hist), sum(retransmits), sum(aborts)")

    def table(name: str) -> dict:
        rows = s.query(f"SELECT {keys}, {sums} FROM {s.db}.{name} GROUP BY {keys} HAVING sum(n) != 0 "
                       f"OR sum(open_seconds) != 0 OR sum(connects) != 0 OR sum(handshakes) != 0")
        return {tuple(r[:8]): tuple(x or 0 for x in r[8:15]) + (tuple(r[15] or []),) + tuple(r[16:]) for r in rows}

    def check() -> None:
        for grain in ("1m", "1h"):
            pairs, svc = table(f"resolved_pairs_{grain}"), table(f"resolved_svc_{grain}")
            assert pairs == svc and pairs, grain

    try:
        s.migrate(directory=older)
        fx.build(s)
        resolve_all(s)
        s.migrate()  # adds the pairs tables and back-fills them
        check()
        ingest_batch(s, "connections", [connection(ts=format_ts(fx.AT - 100), host="h-late", service="web",
                                                   remote_ip="10.0.0.20", remote_port=8080, connects=7, open=1)],
                     batch_id="late")
        resolve_all(s)  # that minute again: withdrawn and written anew, in both
        check()
    finally:
        s.close()


def test_a_store_from_before_the_resolved_tables_is_marked_and_back_filled(store):
    """Records stored without minute marks (an older schema) are found, marked once and resolved."""
    fx.build(store)
    store.execute(f"TRUNCATE TABLE {store.db}.minute_marks")  # as if they predated the marks
    win = Window.at(fx.AT, fx.WINDOW)
    r = resolver(store)
    assert r.pending() == []
    assert r.seed_marks() == 9 and r.seed_marks() == 0  # once: a second call finds nothing unmarked
    assert len(r.pending()) == 9
    assert reads.resolved_until(store, win) == T0 + 60  # the first minute with records: from there views resolve on the spot
    assert {(x["s_name"], x["d_name"]): x["open"] for x in reads.graph_rows(store, win)} == pytest.approx(fx.EXPECTED_OPEN)
    r.run_once()
    assert reads.resolved_until(store, win) == win.end
    assert {(x["s_name"], x["d_name"]): x["open"] for x in reads.graph_rows(store, win)} == pytest.approx(fx.EXPECTED_OPEN)


# -- catalog virtual addresses -------------------------------------------------------

#: A fleet behind translations no tracer sees: api behind a cloud load balancer
#: (VIP 198.51.100.10:443, source NAT pool 10.99.0.0/24) inside a range the
#: external ``cloud`` covers, and db's NodePort 203.0.113.50:5432.
VIP_CATALOG = """
version: 1
areas: [{name: shop}]
services:
  - {name: web, area: shop, match: {comm: [nginx]}}
  - name: api
    area: shop
    virtual:
      - {cidrs: [198.51.100.10], ports: [443], sources: [10.99.0.0/24]}
  - name: db
    area: shop
    virtual: [{cidrs: [203.0.113.50], ports: [5432]}]
  - {name: edge, area: shop}
externals:
  - {name: cloud, cidrs: [198.51.100.0/24]}
"""
NO_VIP_CATALOG = "\n".join(line for line in VIP_CATALOG.splitlines()
                           if "virtual" not in line and "cidrs: [198.51.100.10]" not in line)


def build_vip_fleet(store) -> Window:
    minute = T0 + 120

    def out(port: int, ip: str, n: int, at: int = minute) -> dict:
        return connection(ts=format_ts(at), host="h-web", host_ip="10.0.0.1", service="web", local_ip="10.0.0.1",
                          remote_ip=ip, remote_port=port, connects=n, closes=n)

    def inbound(client: str, n: int) -> dict:
        return connection(ts=format_ts(minute), host="h-api", host_ip="10.0.0.5", service="api",
                          direction="inbound", local_ip="10.0.0.5", local_port=8443, remote_ip=client,
                          remote_port=0, connects=0, accepts=n, closes=n)

    ingest_batch(store, "connections", [
        out(443, "198.51.100.10", 5),    # through the balancer: api
        out(80, "198.51.100.10", 2),     # another port of that address: the external around it
        out(5432, "203.0.113.50", 4),    # the NodePort: db
        out(5433, "203.0.113.50", 1),    # not its port: nothing names it
        inbound("10.99.0.7", 5),         # the balancer's side of web's 5
        inbound("192.0.2.80", 3),        # a client that is not traced, not through the balancer
    ])
    # a minute later a traced host owns the VIP's address and port: its listener wins
    ingest_batch(store, "listeners", [listener(ts=format_ts(minute + 60), host="h-edge", ip="198.51.100.10",
                                               port=443, service="edge")])
    ingest_batch(store, "connections", [out(443, "198.51.100.10", 6, at=minute + 60)])
    return Window.at(minute + 120, 120)


VIP_EDGES = {("web", "api"): 5, ("web", "cloud"): 2, ("web", "db"): 4, ("web", INTERNET): 1,
             ("INTERNET", "api"): 3, ("web", "edge"): 6}


def vip_views(win: Window) -> list[dict]:
    return [{}, {"instances_of": "api"}, {"touching": "api"}, {"touching": INTERNET}, {"dc": "dc1"},
            {"datacenters": True}]


def connects(rows: list[dict]) -> dict:
    return {(r["s_name"], r["d_name"]): r["connects"] for r in rows}


def assert_vip_views_same_as_fresh(store, win: Window) -> None:
    for options in vip_views(win):
        stored = reads.graph_rows(store, win, **options)
        fresh = reads.graph_rows(store, win, resolved=False, **options)
        if "instances_of" in options:
            # stored rows sum INTERNET's addresses into one instance, fresh ones keep them apart
            def by_instance(rows: list[dict]) -> dict:
                out: dict = {}
                for r in rows:
                    key = (r["s_name"], "" if r["s_name"] == INTERNET else r["s_inst"],
                           r["d_name"], "" if r["d_name"] == INTERNET else r["d_inst"])
                    out[key] = out.get(key, 0) + r["connects"]
                return out
            stored, fresh = by_instance(stored), by_instance(fresh)
        assert stored == fresh, options


def test_a_virtual_address_resolves_to_its_service_on_its_ports(store):
    load_into_store(store, parse_catalog(VIP_CATALOG), source="test")
    win = build_vip_fleet(store)
    fresh = reads.graph_rows(store, win, resolved=False)
    # the balancer's side of web's 5 is not counted again; the other client stays
    assert connects(fresh) == VIP_EDGES
    kinds = {(r["s_name"], r["d_name"]): (r["s_kind"], r["d_kind"], r["d_area"]) for r in fresh}
    assert kinds[("web", "api")] == ("service", "service", "shop")
    assert kinds[("web", "cloud")] == ("service", "external", INTERNET)
    resolve_all(store)
    assert reads.resolved_until(store, win) == win.end
    assert_vip_views_same_as_fresh(store, win)
    # the service's own view: the balancer's source is no instance of a client
    inst = reads.graph_rows(store, win, instances_of="api")
    assert {(r["s_name"], r["s_inst"], r["d_inst"], r["connects"]) for r in inst} == {
        ("web", "h-web", "198.51.100.10", 5), (INTERNET, "", "h-api", 3)}


def test_adding_a_virtual_address_shows_without_resolving_again(store):
    load_into_store(store, parse_catalog(NO_VIP_CATALOG), source="before")
    win = build_vip_fleet(store)
    resolve_all(store)
    before = connects(reads.graph_rows(store, win))
    assert before == {("web", "cloud"): 7, ("web", INTERNET): 5, ("INTERNET", "api"): 8, ("web", "edge"): 6}
    load_into_store(store, parse_catalog(VIP_CATALOG), source="after")
    assert resolver(store).pending() == []  # nothing to resolve again ...
    assert_vip_views_same_as_fresh(store, win)  # ... and every view shows the new catalog
    assert connects(reads.graph_rows(store, win)) == VIP_EDGES
    # and back: without sources the balancer's connections are an untraced client again
    load_into_store(store, parse_catalog(VIP_CATALOG.replace(", sources: [10.99.0.0/24]", "")), source="no sources")
    rows = connects(reads.graph_rows(store, win))
    assert rows == {**VIP_EDGES, ("INTERNET", "api"): 8}
    assert rows == connects(reads.graph_rows(store, win, resolved=False))


def test_the_read_index_names_servers_by_virtual_addresses_before_ranges_and_externals():
    from ipaddress import IPv6Address

    from api.catalog.lookups import CatalogIndex

    def span(first: str, last: str) -> tuple[int, int]:
        return int(IPv6Address(first)), int(IPv6Address(last))

    index = CatalogIndex(
        {"api": "shop", "lb-hosts": "shop"},
        services=((*span("::ffff:198.51.100.0", "::ffff:198.51.100.15"), "lb-hosts", "shop", frozenset()),),
        externals=((*span("::ffff:198.51.100.0", "::ffff:198.51.100.255"), "cloud", INTERNET, frozenset()),),
        virtuals=((*span("::ffff:198.51.100.10", "::ffff:198.51.100.10"), "api", "", frozenset({443})),),
        sources=((*span("::ffff:10.99.0.0", "::ffff:10.99.0.255"), "api"),))
    assert index.address("198.51.100.10", 443) == ("service", "api", "shop")
    assert index.address("198.51.100.10", 80) == ("service", "lb-hosts", "shop")
    assert index.address("198.51.100.99", 443) == ("external", "cloud", INTERNET)
    # a client at that address is not the service it stands for
    assert index.address("198.51.100.10", None) == ("service", "lb-hosts", "shop")
    # virtual addresses are never summed into INTERNET as addresses in no range
    vip = str(IPv6Address("::ffff:198.51.100.10"))
    assert (vip, vip) in index.bounds
    assert index.source_bounds == [(str(IPv6Address("::ffff:10.99.0.0")), str(IPv6Address("::ffff:10.99.0.255")),
                                    "api")]


def _hist(*latencies_us: int) -> list[int]:
    from tracer.records import HANDSHAKE_BUCKETS, handshake_bucket

    hist = [0] * HANDSHAKE_BUCKETS
    for us in latencies_us:
        hist[handshake_bucket(us)] += 1
    return hist


def _health(rows: list[dict], pair: tuple[str, str]) -> tuple:
    (row,) = [r for r in rows if (r["s_name"], r["d_name"]) == pair]
    return (row["handshakes"], row["handshake_us"], row["handshake_hist"], row["retransmits"], row["aborts"])


@pytest.mark.slow
def test_health_is_resolved_with_its_edge_and_withdrawn_with_it_when_the_minute_is_resolved_again(store):
    from tracer.records import add_handshake_hists as add_hist

    fx.build(store)
    web_api = dict(host="h-web", host_ip="10.0.0.1", service="web", local_ip="10.0.0.1",
                   remote_ip="10.0.0.2", remote_port=8080, connects=2)
    first = [connection(ts=format_ts(T0 + 120), handshakes=2, handshake_us_sum=1_500, retransmits=3, aborts=1,
                        handshake_hist=_hist(500, 1_000), **web_api),
             connection(ts=format_ts(T0 + 130), handshakes=1, handshake_us_sum=1_020_000,
                        handshake_hist=_hist(1_020_000), **web_api)]
    ingest_batch(store, "connections", first, batch_id="health-1")
    resolve_all(store)
    win = Window.at(T0 + 300, 240)
    expected = (3, 1_021_500, add_hist(_hist(500, 1_000), _hist(1_020_000)), 3, 1)
    assert _health(reads.graph_rows(store, win), ("web", "api")) == expected
    # the instance level and the hourly rollup carry the same sums
    by_instance = [r for r in reads.graph_rows(store, win, instances_of="api") if r["s_name"] == "web"]
    assert sum(r["handshakes"] for r in by_instance) == 3 and sum(r["retransmits"] for r in by_instance) == 3
    day = Window.at(T0 + 24 * 3600, 24 * 3600)
    assert _health(reads.graph_rows(store, day), ("web", "api")) == expected
    assert_same_as_fresh(store)

    # late health for the same minute: the stage withdraws its old sums and writes the new ones
    late = [connection(ts=format_ts(T0 + 150), handshakes=1, handshake_us_sum=700, retransmits=2,
                       handshake_hist=_hist(700), **web_api)]
    ingest_batch(store, "connections", late, batch_id="health-2")
    r = resolver(store)
    assert r.pending() == [T0 + 120]
    r.run_once()
    hist = add_hist(expected[2], _hist(700))
    assert _health(reads.graph_rows(store, win), ("web", "api")) == (4, 1_022_200, hist, 5, 1)
    assert _health(reads.graph_rows(store, day), ("web", "api")) == (4, 1_022_200, hist, 5, 1)
    assert_same_as_fresh(store)
