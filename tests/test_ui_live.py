"""The first minute of a live ``phobos up``: the map is drawn as soon as the first records are in.

``phobos up --simulate --sim-history now`` starts on an empty store, like
``sudo phobos up`` on a fresh machine, and its simulator writes one
interval a minute on the wall clock: every record it has written lies in
the minute being written until the next one.  A view that left that partly
written minute out (``Window.at`` without ``live``) would draw a blank map
for the whole first minute; the live view (``?live=1``) must draw its
connections while the clock is still inside it, and so must the page
opened without parameters.  ``phobos up`` is driven as tests/test_up.py
drives it (a real process on a free port, stopped with Ctrl-C).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from conftest import require  # noqa: E402
from test_up import Up, _has_data, _wait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _drawn(page, url: str) -> dict:
    page.goto(url)
    browser.wait_for(page, "window.phobos && window.phobos.ready && window.phobos.renders >= 1", 60)
    return page.evaluate("({ level: window.phobos.level, shownAt: window.phobos.shownAt, state: window.phobos.state,"
                         " empty: !document.getElementById('empty').hidden,"
                         " nodata: !document.getElementById('nodata').hidden, errors: window.phobos.errors })")


def test_live_map_is_drawn_in_its_first_minute(tmp_path, chromium):
    from api.routes.ui import VIZCERAL_JS

    require(VIZCERAL_JS.is_file(), "Vizceral is not installed: npm ci --prefix static")
    extra = ["--no-trace"] if os.geteuid() == 0 else []
    u = Up(["--data", str(tmp_path / "data"), "--simulate", "--sim-history", "now", "--sim-interval", "60",
            "--sim-services", "12", "--sim-areas", "3", "--sim-instances", "30", *extra],
           env={"HOME": str(tmp_path)})
    try:
        u.wait_for("Phobos is up: open http://127.0.0.1:")
        # The first interval is written when the wall clock reaches the next whole minute.
        _wait(lambda: _has_data(u), 150, "the simulator's first interval", interval=0.2)
        first = u.sql("SELECT toUInt32(min(ts)), toUInt32(max(ts)) FROM phobos.connections")[0]
        minute = first[0] // 60 * 60
        assert first[1] < minute + 60  # one interval so far: all of it in the minute being written
        with browser.launch() as (_, context):
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            live = _drawn(page, u.url + "/?live=1")
            (browser.ARTIFACTS / "ui").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(browser.ARTIFACTS / "ui" / "60-live-first-minute.png"))
            plain = _drawn(page, u.url + "/")
            page.close()
        for state in (live, plain):
            assert not state["empty"] and not state["nodata"] and state["state"] == "ready", state
            assert len(state["level"]["nodes"]) >= 3 and state["level"]["connections"], state["level"]
        # What the live map drew, it drew at a time inside the first minute of data.
        assert minute < live["shownAt"] < minute + 60, (live["shownAt"], minute, time.time())
        assert errors == [] and live["errors"] == [] and plain["errors"] == []
    finally:
        if u.proc.poll() is None:
            u.interrupt()
        u.kill()
