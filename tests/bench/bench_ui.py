"""Benchmark: the web UI in headless Chromium (SwiftShader WebGL) on the 500-service fleet.

Run:  .venv/bin/python tests/bench/bench_ui.py [--dir /tmp/phobos_bench_ui] [--hours 2]
          [--areas 30 --services 500 --instances 5000] [--repeat 3] [--fps-seconds 5]

1. Backfills ``--hours`` of the fleet with ``phobos simulate`` in a separate
   process when ``--dir`` holds no data yet (the directory is kept for reuse).
2. Serves the API and the UI from this process (Werkzeug, threads) and
   drives Debian's Chromium through tests/browser.py.
3. Measures, ``--repeat`` times each, in the page's own clock:

   * navigation -> first rendered frame: from the start of navigation to
     the second animation frame after the view's data went to Vizceral, for
     the areas view, the busiest area and the busiest service (deep links);
   * click -> new view: from the first pointer-down of a double-click on a
     node to the second frame drawn with the new level (area, then service);
   * hover -> tooltip: from the last pointer move onto the busiest area's
     heaviest drawn edge to the tooltip naming it (the page's own
     ``phobos.tooltipMs``), ``--hovers`` times;
   * problems list: at the first simulated incident (its ServiceDown alert
     plus five minutes), the ``/api/v1/problems`` request as the page made
     it (resource timing), and a click on the list's first service to the
     second frame of its area drawn with the service's panel open;
   * frames per second Vizceral draws in each view over ``--fps-seconds``
     (the busiest view is the one with most nodes and connections).

Goal (issue 15): <= 1 s median for first frame and for a view switch, in
headless Chromium with software WebGL on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


ERRORS: list[str] = []


def backfill(directory: str, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "api.simulation.simulate", "--store", f"chdb://{directory}",
           "--areas", str(args.areas), "--services", str(args.services), "--instances", str(args.instances),
           f"--from=-{args.hours}h", "--to", "now", "--quiet"]
    started = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"backfill of {args.hours} h: {time.time() - started:.0f} s (separate process)")


def has_data(directory: str) -> bool:
    from api.storage import open_store

    if not Path(directory, "phobos.lock").exists():
        return False
    with open_store(f"chdb://{directory}", role="bench") as probe:
        return probe.schema_version() > 0 and probe.query(f"SELECT count() FROM {probe.db}.connections")[0][0] > 0


def serve(store):
    from werkzeug.serving import make_server

    from api.app import create_app

    app = create_app({"STORE": store, "BIND_HOST": "127.0.0.1"})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}"


def first_frame(context, url: str) -> tuple[float, dict]:
    """ms from navigation start to the first rendered view, and the level drawn."""
    import browser

    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and ERRORS.append(m.text))
    page.on("pageerror", lambda e: ERRORS.append(str(e)))
    page.goto(url)
    browser.wait_for(page, "window.phobos && window.phobos.renders > 0 && window.phobos.ready", 60, 0.02)
    ms = page.evaluate("window.phobos.lastRender.at")  # performance.now() is ms since navigation start
    level = page.evaluate("window.phobos.level")
    page.close()
    return ms, level


def settle_xy(page, name: str) -> tuple[float, float]:
    last = None
    for _ in range(60):
        pos = page.evaluate(f"window.phobos.nodePosition({json.dumps(name)})")
        if pos and last and abs(pos["x"] - last["x"]) < 0.5 and abs(pos["y"] - last["y"]) < 0.5:
            return pos["x"], pos["y"]
        last = pos
        time.sleep(0.3)
    raise RuntimeError(f"node {name} did not settle")


def click_to_view(page, name: str, want: list[str]) -> float:
    """ms from the pointer-down of a double-click on ``name`` to the new view's second frame."""
    import browser

    x, y = settle_xy(page, name)
    renders = page.evaluate("window.phobos.renders")
    page.evaluate("window.__t0 = null; document.getElementById('viz').addEventListener('pointerdown', "
                  "() => { if (window.__t0 === null) window.__t0 = performance.now(); }, "
                  "{capture: true, once: true})")
    page.mouse.dblclick(x, y)
    browser.wait_for(page, f"window.phobos.renders > {renders} && window.phobos.ready && "
                           f"JSON.stringify(window.phobos.view) === {json.dumps(json.dumps(want, separators=(',', ':')))}", 60, 0.02)
    return page.evaluate("window.phobos.lastRender.at - window.__t0")


def hover_to_tooltip(context, url: str, times: int) -> tuple[list[float], str]:
    """ms from the last pointer move onto the view's heaviest drawn edge to its tooltip, ``times`` times."""
    import browser

    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and ERRORS.append(m.text))
    page.goto(url)
    browser.wait_for(page, "window.phobos && window.phobos.renders > 0 && window.phobos.ready", 60)
    level = page.evaluate("window.phobos.levelData.connections.map((c) => [c.source, c.target,"
                          " (c.metadata || {}).open || 0])")
    edges = sorted((e for e in level if e[0] != e[1]), key=lambda e: -e[2])
    out, named = [], ""
    for source, target, _ in edges[:10]:
        settle_xy(page, source), settle_xy(page, target)
        want = (f"window.phobos.tooltip && window.phobos.tooltip.source === {json.dumps(source)}"
                f" && window.phobos.tooltip.target === {json.dumps(target)}")
        for _ in range(times):
            box = page.locator("#viz").bounding_box()
            for point in page.evaluate(f"window.phobos.edgePoints({json.dumps(source)}, {json.dumps(target)})"):
                page.mouse.move(box["x"] + 3, box["y"] + 3)
                browser.wait_for(page, "window.phobos.tooltip === null", 5, 0.02)
                n = page.evaluate("window.phobos.tooltipMs.length")
                page.mouse.move(point["x"] - 20, point["y"] - 20)
                page.mouse.move(point["x"], point["y"], steps=2)
                try:
                    browser.wait_for(page, want, 2, 0.02)
                except TimeoutError:
                    continue  # another object lies on this point of the edge: try the next
                out.append(page.evaluate(f"window.phobos.tooltipMs.slice({n}).pop()"))
                break
        if out:
            named = f"{source} -> {target}"
            break
    page.close()
    return out, named


def problems_latency(context, url: str, times: int) -> tuple[list[float], list[float], str]:
    """The page's /api/v1/problems request (ms) and click on the first problem -> its view drawn (ms)."""
    import browser

    api, click, name = [], [], ""
    for _ in range(times):
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and ERRORS.append(m.text))
        page.goto(url)
        browser.wait_for(page, "window.phobos && window.phobos.renders > 0 && window.phobos.ready", 60)
        api.append(page.evaluate("performance.getEntriesByType('resource').filter((e) =>"
                                 " e.name.includes('/api/v1/problems')).map((e) => e.responseEnd - e.startTime).pop()"))
        first = page.locator("#problems-services li").first
        name = first.get_attribute("data-name")
        renders = page.evaluate("window.phobos.renders")
        page.evaluate("window.__t0 = null; document.addEventListener('pointerdown', () => {"
                      " if (window.__t0 === null) window.__t0 = performance.now(); }, {capture: true, once: true})")
        first.click()
        browser.wait_for(page, f"window.phobos.renders > {renders} && window.phobos.ready && window.phobos.panel"
                               f" && window.phobos.panel.service === {json.dumps(name)}", 60, 0.02)
        click.append(page.evaluate("window.phobos.lastRender.at - window.__t0"))
        page.close()
    return api, click, name


def fps(context, url: str, seconds: float) -> tuple[float, int, int]:
    import browser

    page = context.new_page()
    page.goto(url)
    browser.wait_for(page, "window.phobos && window.phobos.renders > 0 && window.phobos.ready", 60)
    time.sleep(1.5)  # let the layout and the zoom animation finish
    f0, t0 = page.evaluate("[window.phobos.frames, performance.now()]")
    time.sleep(seconds)
    f1, t1 = page.evaluate("[window.phobos.frames, performance.now()]")
    level = page.evaluate("window.phobos.level")
    page.close()
    return (f1 - f0) / ((t1 - t0) / 1000), len(level["nodes"]), len(level["connections"])


def _epoch(text: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):7.0f} ms   max {max(values):7.0f} ms   (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/phobos_bench_ui", help="chDB data directory (kept for reuse)")
    parser.add_argument("--areas", type=int, default=30)
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--hours", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hovers", type=int, default=7, help="hovers measured (default %(default)s)")
    parser.add_argument("--fps-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    import logging

    import browser

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    problem = browser.why_unavailable()
    if problem:
        print(f"cannot run: {problem}")
        return 2
    if not has_data(args.dir):
        backfill(args.dir, args)

    from api.views import reads
    from api.resolution.tcp import Window
    from api.storage import open_store

    store = open_store(f"chdb://{args.dir}", role="bench")
    first, last = reads.data_range(store)
    at = last - 60
    rows = reads.graph_rows(store, Window.at(at, 300))
    areas = {r["s_area"] for r in rows if r["s_kind"] == "service"}
    busiest_area = max(areas, key=lambda a: sum(1 for r in rows if a in (r["s_area"], r["d_area"])))
    in_area = {r[f"{s}_name"] for r in rows for s in "sd" if r[f"{s}_area"] == busiest_area
               and r[f"{s}_kind"] == "service"}
    busiest = max(in_area, key=lambda s: sum(1 for r in rows if s in (r["s_name"], r["d_name"])))
    services = len({r[f"{s}_name"] for r in rows for s in "sd" if r[f"{s}_kind"] == "service"})
    print(f"store: {services} services with traffic at {at}, {(last - first) / 3600:.1f} h of data; "
          f"busiest area {busiest_area}, its busiest service {busiest}")
    alerts = [i for i in reads.timeline(store, first, last, 3600)["incidents"] if i["alertname"] == "ServiceDown"]
    incident = f"{alerts[0]['service']} down at {alerts[0]['starts_at']}" if alerts else None
    httpd, base = serve(store)
    incident_url = (f"{base}/?at={int(_epoch(alerts[0]['starts_at'])) + 300}" if alerts else None)
    q = f"at={at}"
    urls = {
        "areas": f"{base}/?{q}",
        "area": f"{base}/?area={urllib.parse.quote(busiest_area)}&{q}",
        "service": f"{base}/?area={urllib.parse.quote(busiest_area)}&service={urllib.parse.quote(busiest)}&{q}",
    }
    try:
        with browser.launch() as (_, context):
            first_frame(context, urls["areas"])  # warm the API's caches and the browser's
            print("\nnavigation -> first rendered frame (deep links)")
            sizes = {}
            for name, url in urls.items():
                times = []
                for _ in range(args.repeat):
                    ms, level = first_frame(context, url)
                    times.append(ms)
                sizes[name] = (len(level["nodes"]), len(level["connections"]))
                print(f"  {name:8} {sizes[name][0]:4} nodes {sizes[name][1]:5} connections   {summary(times)}")

            print("\nclick -> new view (double-click on a node)")
            to_area, to_service = [], []
            for _ in range(args.repeat):
                page = context.new_page()
                page.goto(urls["areas"])
                browser.wait_for(page, "window.phobos && window.phobos.renders > 0 && window.phobos.ready", 60)
                to_area.append(click_to_view(page, busiest_area, [busiest_area]))
                to_service.append(click_to_view(page, busiest, [busiest_area, busiest]))
                page.close()
            print(f"  areas -> area     {summary(to_area)}")
            print(f"  area -> service   {summary(to_service)}")

            hovers, named = hover_to_tooltip(context, urls["area"], args.hovers)
            print(f"\nhover -> tooltip ({named or 'no edge answered'})")
            if hovers:
                print(f"  edge tooltip      {summary(hovers)}")

            if incident_url:
                api, clicks, name = problems_latency(context, incident_url, args.repeat)
                print(f"\nproblems list at the first incident ({incident}; first entry {name})")
                print(f"  /problems request {summary(api)}")
                print(f"  click -> its view {summary(clicks)}")
            else:
                print("\nproblems list: the store holds no simulated incident")

            print(f"\nframes per second drawn by Vizceral ({args.fps_seconds:g} s each)")
            for name, url in urls.items():
                rate, nodes, conns = fps(context, url, args.fps_seconds)
                print(f"  {name:8} {nodes:4} nodes {conns:5} connections   {rate:5.1f} fps")
    finally:
        httpd.shutdown()
        store.close()
    print(f"\nconsole errors in the measured pages: {len(ERRORS)}" + (f" (first: {ERRORS[0]})" if ERRORS else ""))
    print(f"cpus: {os.cpu_count()}; Chromium {browser.CHROMIUM} with SwiftShader WebGL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
