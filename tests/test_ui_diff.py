"""The diff in the web UI, in a real headless Chromium: what changed in the open view.

Data: the hand-built fleet of ``tests/fixtures.py`` - between the windows
ending at ``T0+300`` and ``T0+600`` ``ledger -> api`` is new (a deploy),
``web -> INTERNET`` vanished and ``api -> db`` tripled.  Checked: the list
is ranked by absolute change and scoped to the open area, service or the
areas view; a vanished edge is drawn as a bright dashed line; particles grow
with volume; the list folds and × ends the diff; the diff toggle picks a
comparison time inside the data.  Screenshots under ``artifacts/ui/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from test_ui import chrome  # noqa: E402,F401  (the module's browser)
from test_ui_health import HealthPage, fx  # noqa: E402,F401  (fx: the fixture's store and API)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Colour of a vanished edge (static/app.js COLORS.vanished).
VANISHED = (224, 112, 224)


@pytest.fixture
def page(chrome):  # noqa: F811
    p = HealthPage(chrome)
    yield p
    p.close()


def _ranked(page) -> list[tuple[str, str, str]]:
    items = page.page.locator("#diff-ranked li")
    return [(items.nth(i).get_attribute("data-kind"), items.nth(i).get_attribute("data-source"),
             items.nth(i).get_attribute("data-target")) for i in range(items.count())]


def _pixels_like(png: bytes, colour: tuple[int, int, int], tolerance: int = 60) -> int:
    _, _, rows = browser.png_rgb(png)
    return sum(1 for row in rows for k in range(0, len(row), 3)
               if abs(row[k] - colour[0]) + abs(row[k + 1] - colour[1]) + abs(row[k + 2] - colour[2]) < tolerance)


def test_diff_list_is_ranked_and_scoped_to_the_area(page, fx):  # noqa: F811
    T0, AT = fx.fx.T0, fx.fx.AT
    page.open(fx.url + f"/?area=pay&window=240&at={AT}&diff={T0 + 300}")
    api = fx.get(f"/api/v1/diff?from={T0 + 300}&to={AT}&window=240&area=pay")
    # The page lists what the API ranked, in its order: scoped to pay (web -> INTERNET is shop's alone).
    assert _ranked(page) == [(e["kind"], e["source"], e["target"]) for e in api["ranked"]]
    assert {(s, t) for _, s, t in _ranked(page)} == {("ledger", "api"), ("api", "db")}
    deltas = [abs(e["delta"]) for e in api["ranked"]]
    assert deltas == sorted(deltas, reverse=True)
    assert "area pay" in page.page.locator("#diff-range").inner_text()
    page.shot("diff-01-area-pay")

    page.open(fx.url + f"/?area=shop&window=240&at={AT}&diff={T0 + 300}")
    assert {(s, t) for _, s, t in _ranked(page)} == {("ledger", "api"), ("api", "db"), ("web", "INTERNET")}
    # A service's view lists its own edges only.
    page.open(fx.url + f"/?area=shop&service=web&window=240&at={AT}&diff={T0 + 300}")
    assert [(k, s, t) for k, s, t in _ranked(page)] == [("vanished", "web", "INTERNET")]
    # The areas view compares area edges, the ones it draws.
    page.open(fx.url + f"/?window=240&at={AT}&diff={T0 + 300}")
    assert ("vanished", "shop", "INTERNET") in _ranked(page)
    assert page.js("window.phobos.diff.scope.by") == "area"
    page.clean()


def test_vanished_edge_is_drawn_dashed_and_bright(page, fx):  # noqa: F811
    T0, AT = fx.fx.T0, fx.fx.AT
    page.open(fx.url + f"/?area=shop&window=240&at={AT}&diff={T0 + 300}")
    page.node_xy("web"), page.node_xy("INTERNET")
    lines = browser.wait_for(page.page, "(() => { const l = window.phobos.drawnLines();"
                             " return l && l['web--INTERNET'] && l['web--INTERNET'].dashed ? l : null; })()", 10)
    gone = lines["web--INTERNET"]
    assert gone["tint"] == "vanished" and gone["segments"] > 4, gone
    assert lines["ledger--api"]["tint"] == "new"
    # Particles are sized by volume: the largest edge's are bigger than the smallest one's.
    sizes = [v["size"] for k, v in lines.items() if k != "web--INTERNET"]
    assert max(sizes) > min(sizes), lines
    png = page.page.locator("#viz").screenshot()
    assert _pixels_like(png, VANISHED) > 80
    page.shot("diff-02-vanished-dashed")
    page.clean()


def test_diff_list_folds_and_closes_and_defaults_inside_the_data(page, fx):  # noqa: F811
    T0, AT = fx.fx.T0, fx.fx.AT
    page.open(fx.url + f"/?area=shop&window=240&at={AT}&diff={T0 + 300}")
    page.page.locator("#diff-fold").click()
    assert not page.page.locator("#diff-list").is_visible()
    assert page.page.locator("#diff-panel").is_visible()
    page.page.locator("#diff-fold").click()
    assert page.page.locator("#diff-list").is_visible()
    # A click on a change selects its edge in the panel.
    page.page.locator("#diff-ranked li[data-kind=changed]").click()
    browser.wait_for(page.page, "window.phobos.edge && window.phobos.edge.source === 'api'", 15)
    page.page.locator("#diff-close").click()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.diff === null", 30)
    assert "diff" not in page.query
    assert not page.page.locator("#diff-panel").is_visible()
    # The toggle's default comparison time has data: the first full window, not 24 h before.
    page.page.locator("#diff-toggle").check()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.diff !== null", 30)
    from tracer.records import parse_ts

    first = parse_ts(fx.get("/api/v1/timeline")["range"]["first"])
    assert AT - 86400 < first + 240 <= int(page.query["diff"]) < AT, page.query
    assert page.js("window.phobos.diff.new.length") < 3
    page.clean()
