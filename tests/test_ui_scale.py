"""The web UI at scale, in a real headless Chromium: large instance views, a steady layout, the table view, keys.

Data: the hand-built fleet of ``tests/fixtures.py``, and half an hour of a
simulated fleet whose ``payments-api`` runs about 100 instances on 16
hosts.  Screenshots under ``artifacts/ui/``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from factories import BUSY_END  # noqa: E402
from test_ui import Server, _store, chrome  # noqa: E402,F401  (chrome: the module's browser)
from test_ui_health import fx, page  # noqa: E402,F401  (the fixture store and API, a page)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def big(chdb_dir):
    from api.simulation import simulate as sim

    s = _store(chdb_dir, "ui_scale_sim")
    end = BUSY_END  # the same time of day whenever the tests run (tests/factories.py)
    cfg = sim.SimConfig(areas=2, services=6, instances=500, start=end - 1800, end=end, interval=60, seed=3).check()
    sim.simulate(s, cfg)
    server = Server(s)
    server.at = end
    yield server
    server.close()
    s.close()


def test_hundred_instances_are_grouped_with_whole_labels(page, big):
    summary = big.get(f"/api/v1/services/payments-api/summary?at={big.at}")
    assert len(summary["instances"]) >= 90
    page.open(big.url + f"/?service=payments-api&at={big.at}")
    grouped = page.js("window.phobos.grouped")
    assert grouped["by"] == "host" and grouped["instances"] == len(summary["instances"]), grouped
    level = page.js("window.phobos.levelData.nodes.map((n) => [n.name, n.displayName || n.name])")
    groups = [(name, shown) for name, shown in level if name.startswith("host ")]
    assert len(groups) == len({i["host"] for i in summary["instances"]}) <= 30
    # Vizceral cuts labels past 18 characters: none is.
    assert all(len(shown) <= 18 and "×" in shown for _, shown in groups), groups
    # Drawn nodes keep at least a label's height between them.
    points = [page.node_xy(name) for name, _ in groups]
    gaps = [abs(a[1] - b[1]) for i, a in enumerate(points) for b in points[i + 1:] if abs(a[0] - b[0]) < 30]
    assert min(gaps) >= 22, sorted(gaps)[:5]
    page.shot("scale-01-instances-by-host")
    # The table lists them one by one.
    page.page.keyboard.press("t")
    browser.wait_for(page.page, "window.phobos.table", 10)
    names = set(page.js("window.phobos.table.nodes"))
    assert {i["pod"] or i["host"] for i in summary["instances"]} <= names
    page.clean()


def test_opening_the_panel_does_not_move_the_map(page, fx):  # noqa: F811
    page.open(fx.url + f"/?area=shop&at={fx.fx.AT}&window=600")
    before = {n: page.node_xy(n) for n in ("web", "api", "db")}
    x, y = before["api"]
    page.page.mouse.click(x, y)
    browser.wait_for(page.page, "!document.querySelector('#panel').hidden && window.phobos.panel", 15)
    time.sleep(0.5)
    after = {n: page.node_xy(n) for n in before}
    for n in before:
        assert abs(before[n][0] - after[n][0]) < 1 and abs(before[n][1] - after[n][1]) < 1, (n, before[n], after[n])
    page.clean()


def test_table_view_sorts_filters_and_works_from_the_keyboard(page, fx):  # noqa: F811
    page.open(fx.url + f"/?area=shop&at={fx.fx.AT}&window=600")
    page.page.keyboard.press("t")
    browser.wait_for(page.page, "window.phobos.table && !document.querySelector('#table-view').hidden", 10)
    assert page.js("document.activeElement.id") == "table-filter"
    assert "table" in page.query
    level = set(page.js("window.phobos.level.nodes"))
    assert set(page.js("window.phobos.table.nodes")) == level
    # Sorted by open connections in, largest first; a header click sorts by it, again the other way.
    edges_api = {(e["source"], e["target"]): e for e in page.js(
        "window.phobos.levelData.connections.map((c) => ({source: c.source, target: c.target,"
        " open: (c.metadata || {}).open || 0}))")}
    opens = [edges_api[tuple(e)]["open"] for e in page.js("window.phobos.table.edges")]
    assert opens == sorted(opens, reverse=True)
    page.page.locator("#table-nodes th[data-key=label] button").click()
    names = page.js("window.phobos.table.nodes")
    labels = page.js("[...document.querySelectorAll('#table-nodes tbody tr td:first-child')].map((t) => t.textContent)")
    assert labels == sorted(labels, key=str.lower) or labels == sorted(labels)
    page.page.keyboard.press("Enter")  # the header's button has the focus: again, the other way
    labels2 = page.js("[...document.querySelectorAll('#table-nodes tbody tr td:first-child')].map((t) => t.textContent)")
    assert labels2 == labels[::-1] and len(names) == len(labels)
    # Filter, then arrows and Enter open a row: the table closes, the panel shows it.
    page.page.locator("#table-filter").fill("ledger")
    assert page.js("window.phobos.table.nodes") == ["ledger"]
    assert all("ledger" in e for e in page.js("window.phobos.table.edges"))
    page.shot("scale-02-table-filtered")
    page.page.locator("#table-filter").press("ArrowDown")
    assert page.js("document.activeElement.tagName") == "TR"
    page.page.keyboard.press("Enter")
    browser.wait_for(page.page, "window.phobos.ready && document.querySelector('#table-view').hidden"
                                " && window.phobos.panel && window.phobos.panel.service === 'ledger'", 15)
    assert "table" not in page.query
    page.clean()


def test_slash_focuses_search_and_arrows_move_in_results(page, fx):  # noqa: F811
    page.open(fx.url + f"/?at={fx.fx.AT}&window=600")
    page.page.locator("body").click(position={"x": 5, "y": 200})
    page.page.keyboard.press("/")
    assert page.js("document.activeElement.id") == "search"
    page.page.keyboard.type("h-")
    browser.wait_for(page.page, "document.querySelectorAll('#search-results li:not(.none)').length >= 3", 10)
    page.page.keyboard.press("ArrowDown")
    page.page.keyboard.press("ArrowDown")
    items = page.js("[...document.querySelectorAll('#search-results li')].map((li) => li.classList.contains('active'))")
    assert items.index(True) == 1 and items.count(True) == 1
    page.page.keyboard.press("ArrowUp")
    page.page.keyboard.press("ArrowUp")  # wraps to the last
    items = page.js("[...document.querySelectorAll('#search-results li')].map((li) => li.classList.contains('active'))")
    assert items.index(True) == len(items) - 1
    page.page.keyboard.press("Enter")
    browser.wait_for(page.page, "window.phobos.ready && new URLSearchParams(location.search).get('service')", 15)
    page.clean()
