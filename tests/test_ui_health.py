"""Health in the web UI, in a real headless Chromium: red edges and areas, the problems list,
inspecting an edge and an instance, loading, error and no-data states.

Two stores: the hand-built fixture of ``tests/fixtures.py`` (web's connects
to api fail 10 %, danger by the default thresholds), and an hour of a small
simulated fleet (``api/simulation``) whose first incident makes about 60 %
of the connects into one service fail.  Screenshots of each state go to
``artifacts/ui/`` (gitignored); Vizceral's warnings are recorded beside the
console errors, and both must stay empty.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from factories import BUSY_END  # noqa: E402
from test_ui import Page, Server, _store, chrome, fx  # noqa: E402,F401  (chrome, fx: the module's browser and fixture store)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Red of a failing node, edge or label (static/app.js COLORS.danger).
RED = (214, 69, 69)


class HealthPage(Page):
    """A page that also checks the console's warnings (``Page`` records them)."""

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.warnings == [], self.warnings
        assert self.js("window.phobos.errors") == []

    def hover_edge(self, source: str, target: str, either_way: bool = False) -> dict:
        """Move the pointer onto the drawn edge until the page's tooltip names it (``either_way``:
        or the edge back, drawn on the same line)."""
        self.node_xy(source), self.node_xy(target)  # laid out and still
        ends = [[source, target], [target, source]] if either_way else [[source, target]]
        want = f"window.phobos.tooltip && {json.dumps(ends)}.some(([s, t]) =>" \
               f" window.phobos.tooltip.source === s && window.phobos.tooltip.target === t)"
        for point in self.js(f"window.phobos.edgePoints({json.dumps(source)}, {json.dumps(target)})"):
            self.page.mouse.move(point["x"] - 30, point["y"] - 30)
            self.page.mouse.move(point["x"], point["y"], steps=3)
            try:
                browser.wait_for(self.page, want, timeout=2)
                return point
            except TimeoutError:
                continue
        raise AssertionError(f"no tooltip for {source} -> {target}")


@pytest.fixture
def page(chrome):  # noqa: F811
    p = HealthPage(chrome)
    yield p
    p.close()


@pytest.fixture(scope="module")
def incident(chdb_dir):
    """An hour of a 24-service fleet, and the first incident of its time line."""
    from api.simulation import simulate as sim

    s = _store(chdb_dir, "ui_health_sim")
    end = BUSY_END  # the same time of day whenever the tests run (tests/factories.py)
    cfg = sim.SimConfig(areas=4, services=24, instances=96, start=end - 3600, end=end, interval=60, seed=3).check()
    summary = sim.simulate(s, cfg)
    server = Server(s)
    server.incident = next(e for e in summary.events if e["kind"] == "incident")
    # Four minutes inside the incident.
    server.at = server.incident["ts"] + 300
    server.window = 240
    yield server
    server.close()
    s.close()


def _red_pixels(png: bytes, tolerance: int = 40) -> int:
    _, _, rows = browser.png_rgb(png)
    count = 0
    for row in rows:
        for k in range(0, len(row), 3):
            if abs(row[k] - RED[0]) + abs(row[k + 1] - RED[1]) + abs(row[k + 2] - RED[2]) < tolerance:
                count += 1
    return count


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


# -- health is drawn ------------------------------------------------------------------------

def test_incident_minute_draws_red_edges_and_a_red_area(page, incident):
    inc = incident.incident
    view = incident.get(f"/api/v1/areas?at={incident.at}&window={incident.window}")
    red_edges = [(c["source"], c["target"]) for c in view["connections"] if c["class"] == "danger"]
    assert red_edges, "the API draws no failing edge in the incident"
    nodes = {n["name"]: n["class"] for n in view["nodes"]}
    assert nodes[inc["area"]] == "danger"

    page.open(incident.url + f"/?at={incident.at}&window={incident.window}")
    drawn = browser.wait_for(page.page, "(() => { const d = window.phobos.drawnHealth();"
                                        " return d && Object.keys(d.nodes).length ? d : null; })()", 15)
    assert drawn["nodes"][inc["area"]] == "danger"  # Vizceral holds the class it colours the node by
    for source, target in red_edges:
        conn = drawn["connections"][f"{source}--{target}"]
        assert conn["cls"] == "danger" and conn["keys"] == ["danger"], conn  # every particle red
    browser.wait_for(page.page, "Object.values(window.phobos.drawnHealth().connections)"
                                ".some((c) => c.line === 'danger')", 10)  # and the line under them
    time.sleep(1.5)  # particles in flight
    canvas = page.page.locator("#viz").screenshot()
    page.shot("20-incident-areas")
    red = _red_pixels(canvas)
    assert red > 300, red
    legend = page.page.locator("#legend").inner_text()
    assert "failing (≥ 5.0% of connects)" in legend
    assert "degraded (≥ 1.0%, handshake p95 ≥ 500 ms or ≥ 2.0% retransmitted)" in legend
    page.clean()


def test_problems_list_names_the_failing_dependency_and_opens_it(page, incident):
    inc = incident.incident
    api = incident.get(f"/api/v1/problems?at={incident.at}&window={incident.window}&limit=10")
    assert api["services"][0]["name"] == inc["service"]
    page.open(incident.url + f"/?at={incident.at}&window={incident.window}")
    first = page.page.locator("#problems-services li").first
    assert first.get_attribute("data-name") == inc["service"]
    text = first.inner_text()
    assert inc["service"] in text and _pct(api["services"][0]["failure_ratio"]) in text
    page.shot("21-problems-list")
    started = time.monotonic()
    first.click()
    browser.wait_for(page.page, f"window.phobos.ready && window.phobos.panel"
                                f" && window.phobos.panel.service === {json.dumps(inc['service'])}", 30)
    opened_s = time.monotonic() - started
    assert page.query.get("area") == inc["area"] and page.query.get("sel") == inc["service"]
    assert page.page.locator("#panel-title").inner_text() == inc["service"]
    print(f"problems list click to open service panel: {opened_s * 1000:.0f} ms")
    page.shot("22-problem-opened")
    page.clean()


def test_incident_edge_panel_shows_when_the_failures_began(page, incident):
    """The problems list's worst edge of the incident, clicked: its panel's sparkline is red from the
    incident's start on, and not before (this view is static/screenshot.png)."""
    inc = incident.incident
    page.open(incident.url + f"/?at={incident.at}&window={incident.window}")
    item = page.page.locator("#problems-edges li").first
    assert item.get_attribute("data-target") == inc["service"]
    item.click()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.edge && window.phobos.edge.series"
                                " && window.phobos.edge.pairs", 30)
    minutes = _sparkline(page)
    start = inc["ts"] // 60 * 60
    from tracer.records import format_ts
    before = [m for m in minutes if m["t"] < format_ts(start)]
    during = [m for m in minutes if m["t"] >= format_ts(start)]
    assert len(minutes) == 60 and len(during) == 5
    assert all(bool(m["red"]) == (m["failures"] > 0) for m in minutes), minutes  # a bar is red when it failed
    assert sum(m["failures"] for m in before) <= 0.01 * sum(m["connects"] for m in before), before
    # Each minute's connects fail at random (60 % on average), a few a minute on this edge:
    # most minutes are red, and the failures a large share of the connects in all.
    assert sum(m["red"] for m in during) >= 4, during
    assert sum(m["failures"] for m in during) >= 0.3 * sum(m["connects"] for m in during), during
    # the connects that got through lost SYNs: the panel says what they cost, as the API does
    figures = dict(row.split("\t", 1) for row in page.page.locator("#edge-figures tr").all_inner_texts()
                   if "\t" in row)
    meta = page.page.evaluate("window.phobos.edge.meta")
    assert meta["handshake_p95_ms"] >= 1000 and meta["retransmits"] > 0
    assert figures["handshake"].startswith(f"p50 ") and "p95 1." in figures["handshake"], figures
    assert figures["retransmits"].startswith(f"{meta['retransmits']} ("), figures
    page.page.mouse.move(5, 300)  # no tooltip over the picture
    browser.wait_for(page.page, "window.phobos.tooltip === null", 5)
    time.sleep(1.0)  # particles in flight
    page.shot("29-incident-edge")
    page.clean()


def test_problem_edge_click_selects_the_edge(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?at={at}&window={window}")
    item = page.page.locator("#problems-edges li").first
    assert item.get_attribute("data-source") == "web" and item.get_attribute("data-target") == "api"
    item.click()
    browser.wait_for(page.page, "window.phobos.edge && window.phobos.edge.source === 'web'"
                                " && window.phobos.edge.target === 'api' && window.phobos.edge.pairs", 30)
    assert page.query.get("area") == "shop"
    assert page.page.locator("#panel-title").inner_text() == "web → api"
    page.clean()


# -- inspecting an edge and an instance --------------------------------------------------------

def test_hover_and_click_an_edge_show_the_api_figures(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?area=shop&at={at}&window={window}")
    api = next(c for c in fx.get(f"/api/v1/areas/shop?at={at}&window={window}")["connections"]
               if (c["source"], c["target"]) == ("web", "api"))
    meta = api["metadata"]
    want = {"open": f"{meta['open']:.2f}", "new/s": f"{meta['conn_rate']:.3f}",
            "failed": f"{_pct(meta['failure_ratio'])} ({meta['failures']:g} of {meta['connects']:g})",
            "bytes": f"{meta['bytes']:g} B", "seen by": "TCP"}
    # why it is unhealthy, as the API says it (the fixture's tracers measured no handshakes)
    assert meta["reasons"] == ["failures"] and not meta["handshakes"]
    want["why"] = "failed connects"

    latencies = []
    for _ in range(3):
        point = page.hover_edge("web", "api")
        latencies.append(page.js("window.phobos.tooltipMs[window.phobos.tooltipMs.length - 1]"))
        corner = page.page.locator("#viz").bounding_box()
        page.page.mouse.move(corner["x"] + 3, corner["y"] + 3, steps=3)  # off the graph: the tooltip goes
        browser.wait_for(page.page, "window.phobos.tooltip === null", 5)
    point = page.hover_edge("web", "api")
    tip = page.js("window.phobos.tooltip")
    assert tip["cls"] == "danger"
    assert dict(tip["figures"]) == want
    assert page.page.locator("#tooltip").is_visible()
    assert "10.0% (9 of 90)" in page.page.locator("#tooltip").inner_text()
    # Vizceral's own notice box (the .vizceral-notice sibling of the canvas) shows the edge's notice.
    browser.wait_for(page.page, "getComputedStyle(document.querySelector('.vizceral-notice')).display === 'block'", 5)
    assert "9 of 90 connects failed" in page.page.locator(".vizceral-notice").inner_text()
    page.shot("23-edge-hover")
    print(f"hover-to-tooltip: median {statistics.median(latencies):.0f} ms of {[round(x) for x in latencies]}")

    page.page.mouse.click(point["x"], point["y"])
    browser.wait_for(page.page, "window.phobos.edge && window.phobos.edge.pairs", 15)
    assert page.page.locator("#panel").is_visible()
    assert page.page.locator("#panel-title").inner_text() == "web → api"
    rows = page.page.locator("#edge-figures tr").all()[1:]
    shown = dict(r.locator("td").all_inner_texts() for r in rows)
    assert {k: shown[k] for k in want} == want
    pairs = fx.get(f"/api/v1/edges?source=web&target=api&level=area&at={at}&window={window}")["pairs"]
    got = [r.locator("td").all_inner_texts()[:2] for r in page.page.locator("#edge-pairs tr").all()[1:]]
    assert got == [[p["source"], p["target"]] for p in pairs]
    page.shot("24-edge-panel")
    page.clean()


def _sparkline(page) -> list[dict]:
    """The minutes the edge panel's sparkline draws, as its SVG says them."""
    return page.js("[...document.querySelectorAll('#spark .minute')].map((g) => ({ t: g.dataset.t,"
                   " connects: +g.dataset.connects, failures: +g.dataset.failures,"
                   " bars: g.querySelectorAll('rect.bar:not(.failed)').length,"
                   " red: g.querySelectorAll('rect.bar.failed').length }))")


def test_edge_panel_sparkline_is_the_last_hour_per_minute(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?area=shop&at={at}&window={window}")
    point = page.hover_edge("web", "api")
    page.page.mouse.click(point["x"], point["y"])
    browser.wait_for(page.page, "window.phobos.edge && window.phobos.edge.series", 15)
    api = fx.get(f"/api/v1/edges/series?source=web&target=api&level=area&at={at}&window={window}")
    drawn = _sparkline(page)
    assert [(m["t"], m["connects"], m["failures"]) for m in drawn] == \
        [(p["t"], p["connects"], p["failures"]) for p in api["points"]]
    # What the fixture ingested: 10 connects a minute from T0+60 to T0+540, one of them failed.
    minutes = {fx.fx.T0 + 60 * i for i in range(1, 10)}
    from tracer.records import format_ts
    assert [m for m in drawn if m["connects"]] == [
        {"t": format_ts(t), "connects": 10, "failures": 1, "bars": 1, "red": 1} for t in sorted(minutes)]
    assert len(drawn) == 60 and drawn[-1]["t"] == format_ts(at - 60)
    assert "90 connects, 9 failed (10.0%)" in page.page.locator("#edge-series").inner_text()
    page.page.locator("#edge-series").scroll_into_view_if_needed()
    page.shot("24c-edge-sparkline")

    # A service's view: the instance edge web -> h-api2 carries web's connects after the deploy only.
    page.open(fx.url + f"/?area=shop&service=api&at={at}&window={window}")
    point = page.hover_edge("web", "h-api2")
    page.page.mouse.click(point["x"], point["y"])
    browser.wait_for(page.page, "window.phobos.edge && window.phobos.edge.series", 15)
    assert page.js("[window.phobos.edge.series.level, window.phobos.edge.series.service]") == ["service", "api"]
    assert [m["t"] for m in _sparkline(page) if m["connects"]] == [format_ts(t) for t in sorted(minutes)[5:]]
    page.clean()


def test_area_edge_lists_the_service_pairs_behind_it(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?at={at}&window={window}")
    point = page.hover_edge("shop", "pay", either_way=True)
    tip = page.page.locator("#tooltip").inner_text()
    assert "shop → pay" in tip and "pay → shop" in tip  # one line draws both ways: the tooltip names both
    page.page.mouse.click(point["x"], point["y"])
    browser.wait_for(page.page, "window.phobos.edge && window.phobos.edge.pairs", 15)
    if page.js("window.phobos.edge.source") == "pay":
        page.page.locator("#edge-reverse").click()
        browser.wait_for(page.page, "window.phobos.edge.source === 'shop' && window.phobos.edge.pairs", 15)
    pairs = {(p["source"], p["target"]) for p in page.js("window.phobos.edge.pairs")}
    assert pairs == {("api", "db"), ("api", "ledger")}
    page.shot("24b-area-edge-pairs")
    page.clean()


def test_instance_panel_shows_its_connections_and_failures(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?area=shop&service=api&sel=api&at={at}&window={window}")
    x, y = page.node_xy("h-api2")
    page.page.mouse.click(x, y)
    browser.wait_for(page.page, "document.getElementById('panel-title').textContent === 'h-api2'", 15)
    rows = [r.locator("td").all_inner_texts() for r in page.page.locator("#instance-connections tr").all()[1:]]
    peers = {r[0]: r for r in rows}
    assert "← web" in peers and "→ db" in peers and "→ ledger" in peers
    view = fx.get(f"/api/v1/services/api?at={at}&window={window}")
    web = next(c for c in view["connections"] if (c["source"], c["target"]) == ("web", "h-api2"))
    assert peers["← web"][3] == f"{_pct(web['metadata']['failure_ratio'])} of {web['metadata']['connects']:g}"
    page.shot("25-instance-panel")
    page.clean()


# -- states ----------------------------------------------------------------------------------------

def test_loading_error_and_recovery(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?at={at}&window={window}")
    held = []
    page.page.route("**/api/v1/areas?*", lambda route: held.append(route))
    page.js("void window.phobos.navigate({ metric: 'connects' })")
    browser.wait_for(page.page, "!document.getElementById('loading').hidden", 10)
    page.shot("26-loading")
    for route in held:
        route.continue_()
    page.page.unroute("**/api/v1/areas?*")
    page.settle()

    page.page.route("**/api/v1/**", lambda route: route.abort())
    page.js("void window.phobos.navigate({ metric: 'failures' })")
    browser.wait_for(page.page, "window.phobos.state === 'error'", 10)
    assert page.page.locator("#error").is_visible()
    assert "does not answer (GET /api/v1/" in page.page.locator("#error-text").inner_text()
    assert "stale" in page.page.locator("#viz").get_attribute("class")
    frames = page.js("window.phobos.frames")
    time.sleep(0.5)
    assert page.js("window.phobos.frames") == frames  # stale data is not animated
    page.shot("27-error")
    page.page.unroute("**/api/v1/**")
    page.js("void window.phobos.navigate({ metric: undefined })")
    browser.wait_for(page.page, "window.phobos.state === 'ready'", 30)
    assert not page.page.locator("#error").is_visible()
    assert page.js("window.phobos.frames") > frames
    # The browser logs each aborted request; nothing else may be logged.
    assert [e for e in page.errors if not e.startswith("Failed to load resource")] == [] and page.warnings == []
    assert page.js("window.phobos.errors")  # the failed load was recorded, as it should be


def test_time_without_data_says_where_the_data_is(page, fx):
    page.open(fx.url + f"/?at={fx.fx.T0 - 7200}&window=300")
    assert page.page.locator("#nodata").is_visible()
    text = page.page.locator("#nodata-text").inner_text()
    assert "No connections from" in text and "move the time slider" in text
    page.shot("28-no-data")
    page.clean()
