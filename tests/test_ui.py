"""The web UI in a real headless Chromium (Debian's), against the API serving known data.

Data: the hand-built fleet of ``tests/fixtures.py`` (areas shop and
pay, services web/api/batch/ledger/db, a deploy at i=5 after which
``ledger -> api`` is new), plus a store holding a service named like an
XSS payload, and an empty store.  One browser serves the whole module;
each test opens its own page.  Screenshots of every view are saved under
``artifacts/ui/`` (gitignored).

Skipped locally when Chromium or Playwright is missing (see
tests/browser.py); fails in CI.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from conftest import require  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = "<img src=x onerror=alert(1)>"
SHOTS = browser.ARTIFACTS / "ui"


class Server:
    """The API + UI of one store on a free loopback port, in a thread of this process."""

    def __init__(self, store):
        from werkzeug.serving import make_server

        from api.app import create_app
        app = create_app({"STORE": store, "BIND_HOST": "127.0.0.1"})
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def chrome(chromium):
    from api.routes.ui import VIZCERAL_JS

    require(VIZCERAL_JS.is_file(), f"Vizceral is not installed ({VIZCERAL_JS}): npm ci --prefix static")
    with browser.launch() as (_, context):
        yield context


def _store(chdb_dir, name):
    from api.storage import open_store

    s = open_store(f"chdb://{chdb_dir}?database={name}", role="pytest")
    s.migrate()
    return s


@pytest.fixture(scope="module")
def fx(chdb_dir):
    import fixtures

    s = _store(chdb_dir, "ui_fixture")
    fixtures.build(s)
    server = Server(s)
    server.fx = fixtures
    yield server
    server.close()
    s.close()


@pytest.fixture(scope="module")
def xss(chdb_dir):
    """A store whose only client service is named like an XSS payload, with an alert on it."""
    from factories import T0, connection, listener

    from api.ingest.batches import ingest_batch
    from tracer.records import format_ts

    s = _store(chdb_dir, "ui_xss")
    conns = [connection(ts=format_ts(T0 + 60 * i), interval_s=60, service=XSS, comm="evil", host="h-x",
                        host_ip="10.0.0.1", local_ip="10.0.0.1", remote_ip="10.0.0.2", remote_port=8080,
                        open=2) for i in range(1, 6)]
    lis = [listener(ts=format_ts(T0 + 60 * i), service="web", host="h-web", ip="10.0.0.2", port=8080)
           for i in range(1, 6)]
    ingest_batch(s, "listeners", lis, batch_id="xss-l", source="test")
    ingest_batch(s, "connections", conns, batch_id="xss-c", source="test")
    server = Server(s)
    alert = {"receiver": "phobos", "status": "firing", "alerts": [{
        "status": "firing", "labels": {"alertname": XSS, "service": XSS, "severity": "critical"},
        "annotations": {"summary": f"{XSS} is down"}, "startsAt": format_ts(T0),
        "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "x1"}]}
    req = urllib.request.Request(server.url + "/api/v1/alerts", data=json.dumps(alert).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=30).read()
    server.at = T0 + 360
    yield server
    server.close()
    s.close()


@pytest.fixture(scope="module")
def empty(chdb_dir):
    s = _store(chdb_dir, "ui_empty")
    server = Server(s)
    yield server
    server.close()
    s.close()


class Page:
    """A page with its console errors and dialogs recorded."""

    def __init__(self, context):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        # Vizceral warns through console.warn; SwiftShader's own GPU notes are the browser's, not the page's.
        self.warnings: list[str] = []
        self.page.on("console", lambda m: m.type == "warning" and not m.text.startswith("[.WebGL")
                     and self.warnings.append(m.text))

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.settle()

    def settle(self, renders: int | None = None) -> None:
        """Wait for the page's latest render (and, with ``renders``, for that many in all)."""
        expr = "window.phobos && window.phobos.ready" + (f" && window.phobos.renders >= {renders}" if renders else "")
        browser.wait_for(self.page, expr, timeout=30)

    def js(self, expression: str):
        return self.page.evaluate(expression)

    @property
    def query(self) -> dict:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.page.url).query))

    def node_xy(self, name: str) -> tuple[float, float]:
        """A node's place on screen once the layout (worker) and zoom animation have settled."""
        last = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pos = self.js(f"window.phobos.nodePosition({json.dumps(name)})")
            if pos and last and abs(pos["x"] - last["x"]) < 0.5 and abs(pos["y"] - last["y"]) < 0.5:
                return pos["x"], pos["y"]
            last = pos
            time.sleep(0.4)
        raise AssertionError(f"node {name!r} never settled on screen (last {last})")

    def shot(self, name: str) -> bytes:
        SHOTS.mkdir(parents=True, exist_ok=True)
        return self.page.screenshot(path=str(SHOTS / f"{name}.png"))

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def page(chrome):
    p = Page(chrome)
    yield p
    p.close()


def _view(p: Page):
    return p.js("window.phobos.view")


def _level(p: Page):
    return p.js("window.phobos.level")


# -- tests -----------------------------------------------------------------------


def test_first_screen_loads_without_errors_and_draws(page, fx):
    page.open(fx.url + "/")
    assert _view(page) == []
    assert set(_level(page)["nodes"]) == {"INTERNET", "pay", "shop", "unassigned"}
    time.sleep(1.0)  # a few frames of particles
    png = page.shot("01-areas")
    drawn, colours = browser.drawn_pixels(png)
    # Nodes, edges, labels and the page chrome: thousands of pixels, many colours.
    assert drawn > 20000 and colours > 20, (drawn, colours)
    # The canvas itself, alone, is not blank.
    canvas = page.page.locator("#viz").screenshot()
    drawn_canvas, _ = browser.drawn_pixels(canvas)
    assert drawn_canvas > 2000, drawn_canvas
    assert page.js("window.phobos.frames") > 10
    assert page.errors == [] and page.js("window.phobos.errors") == []


def test_drill_down_area_service_instance_and_back(page, fx):
    page.open(fx.url + "/")
    x, y = page.node_xy("shop")
    page.page.mouse.dblclick(x, y)
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"shop\"]' && window.phobos.ready", 30)
    page.settle()
    assert page.query.get("area") == "shop"
    assert {"web", "api", "batch"} <= set(_level(page)["nodes"])
    page.shot("02-area-shop")

    x, y = page.node_xy("api")
    page.page.mouse.dblclick(x, y)
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"shop\",\"api\"]'", 30)
    page.settle()
    assert page.query.get("service") == "api" and page.query.get("area") == "shop"
    assert {"h-api1", "h-api2"} <= set(_level(page)["nodes"])
    assert "".join(page.page.locator("#crumbs").inner_text().split()) == "Allareas›shop›api"
    page.shot("03-service-api")

    x, y = page.node_xy("h-api2")  # an instance: a click shows it in the panel
    page.page.mouse.click(x, y)
    browser.wait_for(page.page, "document.getElementById('panel-title').textContent === 'h-api2'", 15)
    assert "10.0.0.3" in page.page.locator("#panel").inner_text()
    page.shot("03b-instance")

    # The panel lies over the map (opening it does not move the graph): close it to reach db.
    page.page.locator("#panel-close").click()
    x, y = page.node_xy("db")  # a peer of api, in area pay: double-click opens it there
    page.page.mouse.dblclick(x, y)
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"pay\",\"db\"]' && window.phobos.ready", 30)
    assert page.query.get("service") == "db" and page.query.get("area") == "pay"
    page.page.go_back()

    page.page.go_back()
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"shop\"]'", 30)
    assert "service" not in page.query and page.query.get("area") == "shop"
    page.page.keyboard.press("Escape")  # Esc zooms out to the areas (bug #89 path)
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[]'", 30)
    page.settle()
    assert "area" not in page.query
    assert set(_level(page)["nodes"]) == {"INTERNET", "pay", "shop", "unassigned"}
    assert page.js("window.phobos.drawn()") == {"view": [], "nodes": ["INTERNET", "pay", "shop", "unassigned"]}
    page.shot("04-back-to-areas")
    assert page.errors == []


def test_deep_link_opens_the_view(page, fx):
    page.open(fx.url + f"/?service=api&at={fx.fx.AT}&window=600")
    assert _view(page) == ["shop", "api"]
    assert page.query.get("area") == "shop"  # filled in from the service's area
    level = _level(page)
    assert level["name"] == "api"
    assert {"h-api1", "h-api2", "db", "ledger", "web"} == set(level["nodes"])
    assert page.page.locator("#panel-title").inner_text() == "api"
    page.shot("05-deep-link-service")
    assert page.errors == []


def test_side_panel_shows_the_api_values(page, fx):
    at, window = fx.fx.AT, fx.fx.WINDOW
    page.open(fx.url + f"/?area=shop&sel=api&at={at}&window={window}")
    summary = fx.get(f"/api/v1/services/api/summary?at={at}&window={window}")
    panel = page.page.locator("#panel")
    assert panel.is_visible()
    assert page.page.locator("#panel-title").inner_text() == "api"
    hosts = page.page.locator("#panel-instances tr td:first-child").all_inner_texts()
    assert hosts == [i["host"] for i in summary["instances"]]
    for direction in ("inbound", "outbound"):
        rows = page.page.locator(f"#panel-{direction} tr").all()[1:]
        got = [r.locator("td").all_inner_texts() for r in rows]
        want = summary[direction]
        assert [g[0] for g in got] == [d["name"] for d in want]
        assert [float(g[2]) for g in got] == pytest.approx([d["open"] for d in want], abs=0.01)
        assert [g[4] for g in got] == [f"{d['failure_ratio'] * 100:.1f}%" for d in want]
        assert [g[7] for g in got] == [{"tcp": "TCP", "trace": "traces", "both": "TCP + traces"}[d["provenance"]]
                                       for d in want]
    assert "web" in [d["name"] for d in summary["inbound"]]
    links = page.page.locator("#panel-links a")
    assert links.first.get_attribute("href") == summary["links"][0]["url"]
    assert summary["first_seen"] in page.page.locator("#panel-seen").inner_text()
    page.shot("06-side-panel")
    assert page.errors == []


def test_time_slider_changes_at_and_the_graph(page, fx):
    T0, AT = fx.fx.T0, fx.fx.AT
    # window 240 s: [T0+360, T0+600) is after the deploy, [T0, T0+240) before it.
    page.open(fx.url + f"/?area=shop&window=240&at={AT}")
    after = {tuple(c) for c in _level(page)["connections"]}
    assert ("ledger", "api") in after and ("web", "INTERNET") not in after
    renders = page.js("window.phobos.renders")
    slider = page.page.locator("#slider")
    assert int(slider.get_attribute("min")) <= T0 + 240 <= int(slider.get_attribute("max"))
    slider.fill(str(T0 + 240))  # a real input + change on the range control
    page.settle(renders + 1)
    assert page.query.get("at") == str(T0 + 240)
    before = {tuple(c) for c in _level(page)["connections"]}
    assert ("web", "INTERNET") in before and ("ledger", "api") not in before
    from tracer.records import format_ts

    assert format_ts(T0 + 240) in page.page.locator("#at-label").inner_text()
    page.shot("07-time-slider")
    page.page.go_back()
    page.settle(renders + 2)
    assert page.query.get("at") == str(AT)
    assert ("ledger", "api") in {tuple(c) for c in _level(page)["connections"]}
    # Back to the areas after the data changed (Vizceral bug #89): Vizceral itself
    # draws the root level with the areas of the new time.
    page.page.keyboard.press("Escape")
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.view.length === 0", 30)
    want = sorted(n["name"] for n in fx.get(f"/api/v1/areas?at={AT}&window=240")["nodes"])
    drawn = browser.wait_for(page.page, "(() => { const d = window.phobos.drawn(); "
                                        "return d && d.view.length === 0 && d.nodes.length ? d : null; })()", 10)
    assert drawn["nodes"] == want
    assert page.errors == []


def test_diff_mode_highlights_the_new_edge(page, fx):
    T0, AT = fx.fx.T0, fx.fx.AT
    page.open(fx.url + f"/?area=shop&window=300&at={AT}&diff={T0 + 300}")
    diff = page.js("window.phobos.diff")
    assert ["ledger", "api"] in diff["new"]
    assert ["ledger", "api"] in diff["highlighted"]
    assert page.page.locator("#diff-ranked li[data-kind=new]").first.inner_text().startswith("+\nledger → api")
    assert page.page.locator("#diff-panel").is_visible()
    page.shot("08-diff")
    # In api's own view the new edge ends at the instance that took the traffic.
    page.open(fx.url + f"/?area=shop&service=api&window=300&at={AT}&diff={T0 + 300}")
    assert ["ledger", "h-api2"] in page.js("window.phobos.diff")["highlighted"]
    page.shot("08b-diff-service")
    # Turning diff off from the control drops it from the URL and the page.
    page.page.locator("#diff-toggle").uncheck()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.diff === null", 30)
    assert "diff" not in page.query
    assert not page.page.locator("#diff-panel").is_visible()
    # ... and on again picks an earlier time by itself.
    page.page.locator("#diff-toggle").check()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.diff !== null", 30)
    assert int(page.query["diff"]) < AT
    assert page.errors == []


def test_another_areas_service_opens_in_its_own_area(page, fx):
    """db (area pay) is drawn in shop's view as a peer; double-clicking it opens it in pay, and the
    breadcrumb says so - as a deep link naming the wrong area does."""
    page.open(fx.url + f"/?area=shop&at={fx.fx.AT}&window=600")
    x, y = page.node_xy("db")
    page.page.mouse.dblclick(x, y)
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"pay\",\"db\"]' && window.phobos.ready", 30)
    assert page.query.get("area") == "pay" and page.query.get("service") == "db"
    assert "".join(page.page.locator("#crumbs").inner_text().split()) == "Allareas›pay›db"
    page.open(fx.url + f"/?area=shop&service=ledger&at={fx.fx.AT}&window=600")
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"pay\",\"ledger\"]'", 30)
    assert "".join(page.page.locator("#crumbs").inner_text().split()) == "Allareas›pay›ledger"
    # INTERNET has no area of its own: it opens where it was double-clicked.
    page.open(fx.url + f"/?area=shop&service=INTERNET&at={fx.fx.AT}&window=600")
    assert page.js("window.phobos.view") == ["shop", "INTERNET"]
    assert page.errors == [] and page.warnings == []


def test_service_view_colours_peers_by_area_as_the_legend_says(page, fx):
    page.open(fx.url + f"/?area=shop&service=web&at={fx.fx.AT}&window=600")
    drawn = browser.wait_for(page.page, "(() => { const d = window.phobos.drawnHealth();"
                                        " return d && d.nodes.batch ? d : null; })()", 15)
    # batch is a service of shop, like web: green ("service of this area"); redis (unassigned) is blue.
    assert drawn["nodes"]["batch"] == "area" and drawn["nodes"]["redis"] == "other", drawn["nodes"]
    assert drawn["nodes"]["h-web"] == "area"
    assert page.page.locator("#legend").inner_text().startswith("service of this area")
    page.shot("03c-service-web-peers")
    assert page.errors == [] and page.warnings == []


def test_impact_highlights_the_upstream_set(page, fx):
    page.open(fx.url + f"/?area=shop&sel=db&at={fx.fx.AT}&window=600")
    page.page.locator("#impact-button").click()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.impact !== null", 30)
    impact = page.js("window.phobos.impact")
    assert impact["service"] == "db"
    assert set(impact["upstream"]) == {"api", "web", "ledger", "INTERNET", "batch"}
    # Every upstream service drawn in the shop view is highlighted, nothing else.
    assert set(impact["highlighted"]) == {"api", "web", "ledger", "INTERNET", "batch"}
    assert page.query.get("impact") == "db"
    areas = page.page.locator("#impact-areas li").all_inner_texts()
    assert [a.split(" ")[0] for a in areas] == ["shop", "pay"]  # INTERNET is upstream, but no business area
    # db stays selected, and Vizceral dims what is not its neighbour - but not what impact highlights:
    # web and batch call db only through api, and stay lit; redis, neither, is dimmed.
    dim = browser.wait_for(page.page, "(() => { const d = window.phobos.drawnDimming();"
                                      " return d && d.nodes.redis ? d : null; })()", 10)
    assert dim["selected"] == "db"
    assert {n for n, dimmed in dim["nodes"].items() if dimmed} == {"redis"}, dim
    assert not dim["connections"]["batch--web"] and not dim["connections"]["web--api"]
    assert dim["connections"]["web--redis"]
    page.shot("09-impact")
    page.page.keyboard.press("Escape")
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.impact === null", 30)
    assert "impact" not in page.query
    # Impact off: the selection's focus dims the upstream services that are not db's neighbours again.
    browser.wait_for(page.page, "window.phobos.drawnDimming().nodes.web === true", 10)
    # A deep link with impact on lights them from the first frame.
    page.open(fx.url + f"/?area=shop&sel=db&impact=db&at={fx.fx.AT}&window=600")
    dim = browser.wait_for(page.page, "(() => { const d = window.phobos.drawnDimming();"
                                      " return d && d.selected && d.nodes.redis ? d : null; })()", 10)
    assert {n for n, dimmed in dim["nodes"].items() if dimmed} == {"redis"}, dim
    assert page.errors == [] and page.warnings == []


def test_search_jumps_to_the_node(page, fx):
    page.open(fx.url + f"/?at={fx.fx.AT}&window=600")
    page.page.locator("#search").fill("10.0.0.5")
    item = page.page.locator("#search-results li", has_text="ledger")
    item.first.click()
    browser.wait_for(page.page, "JSON.stringify(window.phobos.view) === '[\"pay\",\"ledger\"]'", 30)
    page.settle()
    assert page.query.get("service") == "ledger"
    assert page.page.locator("#panel-title").inner_text() == "ledger"
    page.shot("10-search")
    assert page.errors == []


def test_metric_switch(page, fx):
    page.open(fx.url + f"/?area=shop&at={fx.fx.AT}&window=600")
    renders = page.js("window.phobos.renders")
    page.page.locator("#metric").select_option("failures")
    page.settle(renders + 1)
    assert page.query.get("metric") == "failures"
    assert page.errors == []


def test_hostile_service_name_does_not_run_script(page, xss):
    at = xss.at
    for url in (f"/?at={at}&window=600", f"/?area=unassigned&sel={urllib.parse.quote(XSS)}&at={at}&window=600",
                f"/?service={urllib.parse.quote(XSS)}&at={at}&window=600"):
        page.open(xss.url + url)
        time.sleep(0.5)
    assert page.page.locator("#panel-title").inner_text() == XSS
    assert page.js("window.phobos.incidents") >= 1  # the alert is marked on the time line
    # Hovering the alerting instance brings up Vizceral's notices (inserted as HTML).
    x, y = page.node_xy("h-x")
    page.page.mouse.move(x, y)
    time.sleep(0.5)
    assert XSS in page.page.locator("#crumbs").inner_text()
    alerts = page.page.locator("#panel-alerts").inner_text()
    assert XSS in alerts
    page.page.locator("#search").fill("img src")
    browser.wait_for(page.page, "!document.getElementById('search-results').hidden", 10)
    page.shot("11-hostile-name")
    # The name is text everywhere: no <img> was created, no dialog opened.
    assert page.js("document.querySelectorAll('img').length") == 0
    assert page.dialogs == []
    assert page.errors == []


def test_empty_store_says_how_to_get_data(page, empty):
    page.open(empty.url + "/")
    assert page.page.locator("#empty").is_visible()
    text = page.page.locator("#empty").inner_text()
    assert "No data yet" in text and "phobos up --simulate" in text
    page.shot("12-empty-store")
    assert page.errors == []
