"""The incident timeline in a real headless Chromium: axis, zone, marks, zoom, "diff against just before".

Data: an hour of the small simulated fleet of ``tests/test_ui_health.py``
(its first incident makes about 60 % of the connects into one service
fail).  The simulator writes its incidents (``ServiceDown``, firing then
resolved) and its deploys (``Deploy`` notifications) as alerts, so the time
line has marks of every kind out of the box.  Screenshots under
``artifacts/ui/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from test_ui import chrome  # noqa: E402,F401  (the module's browser)
from test_ui_health import incident, page  # noqa: E402,F401  (the simulated store and API, a page)

from tracer.records import format_ts, parse_ts  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _marks(page) -> list[dict]:
    return page.js("""[...document.querySelectorAll('#timeline .mark')].map((m) => {
        const r = m.querySelector('path, rect:not(.hit)').getBoundingClientRect();
        return { kind: m.dataset.kind, t: +m.dataset.t, w: r.width, h: r.height,
                 x: r.left + r.width / 2, y: r.top + r.height / 2 }; })""")


def test_simulated_incidents_and_deploys_are_alerts_on_the_timeline(incident):  # noqa: F811
    tl = incident.get("/api/v1/timeline?buckets=60")
    names = {(i["alertname"], i["service"]) for i in tl["incidents"]}
    assert ("ServiceDown", incident.incident["service"]) in names
    assert any(name == "Deploy" for name, _ in names)
    # A deploy is never firing; the incident fires while it lasts, then is resolved.
    at = incident.incident["ts"] + 120
    firing = incident.get(f"/api/v1/services/{incident.incident['service']}/summary?at={at}")["alerts"]
    assert [a["alertname"] for a in firing] == ["ServiceDown"]
    after = incident.get(f"/api/v1/services/{incident.incident['service']}/summary?at={incident.incident['end'] + 120}")
    assert after["alerts"] == []


def test_timeline_has_an_axis_and_visible_marks(page, incident):  # noqa: F811
    page.open(incident.url + "/")
    labels = page.js("[...document.querySelectorAll('#timeline .axis text')].map((t) => t.textContent)")
    assert len(labels) >= 4 and all(":" in text for text in labels), labels
    marks = _marks(page)
    kinds = {m["kind"] for m in marks}
    assert {"alert", "deploy", "spike"} <= kinds, marks
    assert all(m["w"] >= 6 and m["h"] >= 10 for m in marks), marks  # not 3 x 6 px any more
    assert "UTC" in page.page.locator("#tl-range").inner_text()
    page.shot("timeline-01-marks")
    page.clean()


def test_mark_click_sets_the_time_and_offers_the_diff(page, incident):  # noqa: F811
    # In the failing service's area, where the incident's edges are drawn.
    area = incident.incident["area"]
    page.open(incident.url + f"/?area={area}")
    window = page.js("window.phobos.window")
    start = incident.incident["ts"]
    mark = next(m for m in _marks(page) if m["kind"] == "alert" and m["t"] == start)
    page.page.mouse.click(mark["x"], mark["y"])
    browser.wait_for(page.page, f"window.phobos.ready && window.phobos.shownAt === {start + window}", 30)
    assert int(page.query["at"]) == start + window
    assert page.page.locator("#mark-pop").is_visible()
    assert "ServiceDown" in page.page.locator("#mark-title").inner_text()
    assert format_ts(start + window) in page.page.locator("#at-label").inner_text()
    page.shot("timeline-02-mark-clicked")
    page.page.locator("#mark-diff").click()
    browser.wait_for(page.page, "window.phobos.ready && window.phobos.diff !== null", 30)
    assert int(page.query["diff"]) == start and int(page.query["at"]) == start + window
    assert page.query["metric"] == "failures"  # an alert's change is in the failures
    # The window after the incident began against the one just before it: the failing
    # service's clients fail; the list is ranked and scoped to the area.
    assert page.js("window.phobos.diff.scope.area") == area
    ranked = page.js("window.phobos.diff.ranked")
    assert any(incident.incident["service"] in (r[1], r[2]) for r in ranked), ranked
    assert ranked, "no change listed"
    deltas = [abs(r[3]) for r in ranked]
    assert deltas == sorted(deltas, reverse=True)
    assert not page.page.locator("#mark-pop").is_visible()
    page.shot("timeline-03-diff-before")
    page.clean()


def test_marks_are_keyboard_reachable(page, incident):  # noqa: F811
    page.open(incident.url + "/")
    page.page.locator("#timeline .mark.deploy").first.focus()
    t = int(page.page.locator("#timeline .mark.deploy").first.get_attribute("data-t"))
    page.page.keyboard.press("Enter")
    browser.wait_for(page.page, f"window.phobos.ready && window.phobos.mark && window.phobos.mark.t === {t}", 30)
    assert page.page.locator("#mark-pop").is_visible()
    assert "deploy of" in page.page.locator("#mark-title").inner_text()
    page.clean()


def test_relative_at_labels_the_time_shown(page, incident):  # noqa: F811
    # A relative time that falls inside the simulated hour; the label says the
    # time the API resolved it to, the slider stands there.
    rel = f"-{int(time.time() - incident.at) // 60}m"
    page.open(incident.url + f"/?at={rel}&window=300")
    shown = incident.get(f"/api/v1/areas?at={rel}&window=300")["metadata"]["at"]
    label = page.page.locator("#at-label").inner_text()
    assert abs(parse_ts(label.split("at ", 1)[1].split()[0]) - parse_ts(shown)) <= 120, (label, shown)
    assert abs(int(page.page.locator("#slider").input_value()) - parse_ts(shown)) <= 120
    page.clean()


def test_zone_choice_changes_labels_and_panel_times(page, incident):  # noqa: F811
    at = incident.at
    page.open(incident.url + f"/?at={at}&window=240&tz=Asia/Tokyo")
    label = page.page.locator("#at-label").inner_text()
    assert "GMT+9" in label and format_ts(at // 60 * 60) in label, label
    tokyo = page.js("[...document.querySelectorAll('#timeline .axis text')].map((t) => t.textContent)")
    page.page.locator("#tz").select_option("UTC")
    browser.wait_for(page.page, "!location.search.includes('tz=')", 5)
    utc = page.js("[...document.querySelectorAll('#timeline .axis text')].map((t) => t.textContent)")
    assert tokyo != utc
    # Panel times say their zone and are never after now.
    svc = incident.incident["service"]
    area = incident.get(f"/api/v1/services/{svc}/summary?at={at}")["area"]
    page.open(incident.url + f"/?area={area}&sel={svc}&at={at}&window=240")
    browser.wait_for(page.page, "document.querySelector('#panel-seen')", 15)
    seen = page.page.locator("#panel-seen").inner_text()
    assert seen.count("UTC") == 2, seen
    last = seen.split("last seen ", 1)[1].replace(" UTC", "")
    assert parse_ts(last.replace(" ", "T") + "Z") <= time.time() + 1
    page.clean()


def test_brush_zooms_and_zoom_out_returns(page, incident):  # noqa: F811
    page.open(incident.url + "/")
    before = page.js("window.phobos.timelineX")
    box = page.page.locator("#timeline").bounding_box()
    y = box["y"] + 30
    page.page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.page.mouse.down()
    page.page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.page.mouse.up()
    browser.wait_for(page.page, f"window.phobos.timelineX.to - window.phobos.timelineX.from"
                                f" < {(before['to'] - before['from']) * 0.5}", 15)
    zoomed = page.js("window.phobos.timelineX")
    assert before["from"] <= zoomed["from"] < zoomed["to"] <= before["to"]
    page.shot("timeline-04-zoomed")
    page.page.locator("#tl-zoom-out").click()
    browser.wait_for(page.page, f"window.phobos.timelineX.to - window.phobos.timelineX.from"
                                f" > {(zoomed['to'] - zoomed['from']) * 1.5}", 15)
    page.clean()
