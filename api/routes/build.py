"""Assembling the views: queries -> graph model -> Vizceral JSON.

Each ``*_view`` function takes the store, the app config and parsed
parameters and returns the JSON-ready response.  They read through
``api.queries`` only, contract with ``api.graph`` and serialise with
``api.vizceral``, so that the blueprints stay a few lines each.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, defaultdict
from typing import Any, Callable, Iterable, Mapping

from api import graph as g
from api import queries as q
from api import vizceral as vz
from api.catalog.lookups import INTERNET, UNASSIGNED, catalog_maps
from api.resolution.tcp import Window
from api.errors import ApiError

__all__ = [
    "ResultCache",
    "areas_view",
    "area_view",
    "datacenters_view",
    "service_view",
    "service_summary",
    "service_impact",
    "graph_diff",
]


def _meta(p: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    win: Window = p["win"]
    return {"at": _iso(win.end), "from": _iso(win.start), "window": win.seconds, "metric": p["metric"],
            "dc": p.get("dc"), **extra}


def _iso(ts: int) -> str:
    from tracer.records import format_ts

    return format_ts(ts)


class ResultCache:
    """A small LRU of query results with a time to live, shared by the views.

    Every view of one window (areas, an area, impact, summary ...) starts
    from the same resolved rows, and a UI asks for several of them per
    click; the rows of a past window only change when late records arrive.
    Entries of windows ending in the last ``RECENT`` seconds live
    ``ttl_recent`` seconds (late records), older ones ``ttl``.  Ingest
    forgets only the views of windows its records fall into
    (``forget_from``): the cached views of closed windows stay while no
    late row reaches them; alerts clear it all.  ``ttl=0`` disables it.
    """

    RECENT = 900

    def __init__(self, ttl: float, ttl_recent: float | None = None, size: int = 32):
        self.ttl = ttl
        self.ttl_recent = min(ttl, 20.0) if ttl_recent is None else ttl_recent
        self.size = size
        self._lock = threading.Lock()
        self._data: OrderedDict[Any, tuple[float, Any, int | None]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Any, compute: Callable[[], Any], end: int | None = None) -> Any:
        if self.ttl <= 0:
            return compute()
        now = time.monotonic()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] > now:
                self._data.move_to_end(key)
                self.hits += 1
                return entry[1]
        self.misses += 1
        value = compute()
        recent = end is None or end > time.time() - self.RECENT
        with self._lock:
            self._data[key] = (now + (self.ttl_recent if recent else self.ttl), value, end)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def forget_from(self, ts: int | None) -> None:
        """Forget what records from ``ts`` on can change: views of windows
        ending after it, and entries of no window."""
        if ts is None:
            return
        minute = int(ts) // 60 * 60
        with self._lock:
            for key in [k for k, entry in self._data.items() if entry[2] is None or entry[2] > minute]:
                del self._data[key]


def _cache() -> ResultCache:
    from flask import current_app

    return current_app.extensions["phobos_cache"]


def _rows(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any], *, win: Window | None = None,
          **kw: Any) -> list[dict[str, Any]]:
    win = win or p["win"]
    key = ("rows", store.db, win, p.get("dc"), tuple(sorted(kw.items())))
    return _cache().get(key, lambda: q.graph_rows(store, win, dc=p.get("dc"), slack=cfg["LISTENER_SLACK"],
                                                   **kw), win.end)


def _catalog(store: Any) -> dict[str, Any]:
    return catalog_maps(store)  # read once per catalog version


def _alerting(store: Any, at: int) -> dict[str, list[dict[str, Any]]]:
    def compute() -> dict[str, list[dict[str, Any]]]:
        by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for alert in q.firing_alerts(store, at):
            by_service[alert["service"]].append(alert)
        return by_service

    return _cache().get(("alerts", store.db, at), compute, at)


def _alert_notices(alerts: Iterable[Mapping[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    alerts = list(alerts)
    out = [vz.notice(f"{a['alertname']}: {a['summary']}" if a.get("summary") else a["alertname"],
                     severity=2 if a.get("severity") in ("critical", "page", "error") else 1)
           for a in alerts[:limit]]
    if len(alerts) > limit:
        out.append(vz.notice(f"{len(alerts) - limit} more alerts", severity=1))
    return out


def _grouped(edges: dict[tuple[str, str], g.Edge], nodes: dict[str, dict[str, Any]], metric: str,
             max_nodes: int, keep: Iterable[str], what: str) -> tuple[dict[tuple[str, str], g.Edge],
                                                                    dict[str, dict[str, Any]], list[str],
                                                                    str | None]:
    """Fold the long tail of ``nodes`` into one "N more" node."""
    volumes = {n: 0.0 for n in nodes}
    volumes.update({n: v for n, v in g.node_volumes(edges, metric).items() if n in nodes})
    kept, tail = g.long_tail(volumes, max_nodes, keep)
    if not tail:
        return edges, nodes, [], None
    name = f"{len(tail)} more {what}"
    while name in nodes:
        name += "+"
    folded: dict[tuple[str, str], g.Edge] = {}
    for (src, dst), edge in edges.items():
        key = (src if src in kept else name, dst if dst in kept else name)
        target = folded.get(key)
        if target is None:
            target = folded[key] = g.Edge(*key)
        target.add(edge.values)
    new_nodes = {n: d for n, d in nodes.items() if n in kept}
    new_nodes[name] = {"cls": "normal", "grouped": tail}
    return folded, new_nodes, tail, name


def _tail_notice(tail: list[str], what: str) -> list[dict[str, Any]]:
    if not tail:
        return []
    shown = ", ".join(tail[:10]) + (" ..." if len(tail) > 10 else "")
    return [vz.notice(f"{len(tail)} {what} with the least traffic are grouped: {shown}", severity=0)]


def _vz_nodes(nodes: Mapping[str, Mapping[str, Any]], renderer: str | None,
              updated: int) -> list[dict[str, Any]]:
    out = []
    for name in sorted(nodes):
        data = nodes[name]
        meta = {k: v for k, v in data.items() if k not in ("cls", "notices", "display")}
        if "grouped" in meta:
            meta["grouped"] = meta["grouped"][:200]
            meta["grouped_count"] = len(data["grouped"])
        out.append(vz.node(name, cls=data.get("cls", "normal"), renderer=renderer,
                           display=data.get("display"), metadata=meta, notices=data.get("notices", ()),
                           updated=updated))
    return out


def _edge_meta(e: g.Edge) -> dict[str, Any]:
    """What an edge's side panel shows: both sources' volumes and who saw it."""
    v = e.values
    return {"provenance": e.provenance, "connects": v["connects"], "failures": v["failures"],
            "open": round(v["open"], 6), "conn_rate": round(v["conn_rate"], 6), "bytes": v["bytes"],
            "calls": v["calls"], "call_errors": v["call_errors"], "call_rate": round(v["call_rate"], 6),
            "call_mean_ms": round(v["call_us"] / v["calls"] / 1000, 3) if v["calls"] else None}


def _vz_connections(edges: Mapping[tuple[str, str], g.Edge], metric: str) -> list[dict[str, Any]]:
    return [vz.connection(s, d, e.values, metric, metadata=_edge_meta(e))
            for (s, d), e in sorted(edges.items()) if s != d]


# -- global: areas -----------------------------------------------------------

def areas_view(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    """Business areas and INTERNET with the traffic between them (Vizceral ``global``)."""
    rows = _rows(store, cfg, p)
    catalog = _catalog(store)
    alerts = _alerting(store, p["win"].end)
    nodes: dict[str, dict[str, Any]] = {INTERNET: {"cls": "normal", "kind": "internet"}}
    for name, area in catalog["areas"].items():
        if area["kind"] == "area":
            nodes[name] = {"cls": "normal", "kind": "area", "display": area["title"] or name}
    edges = g.contract(rows, lambda r, side: r[f"{side}_area"])
    for (src, dst) in edges:
        for n in (src, dst):
            nodes.setdefault(n, {"cls": "normal", "kind": "area"})
    area_alerts: dict[str, list] = defaultdict(list)
    for service, items in alerts.items():
        area = catalog["services"].get(service, {}).get("area") or UNASSIGNED
        area_alerts[area].extend(items)
    for name, data in nodes.items():
        internal = edges.get((name, name))
        data["internal"] = g.metric_value(internal.values, p["metric"]) if internal else 0.0
        if area_alerts.get(name):
            data["cls"] = "danger"
            data["alerts"] = len(area_alerts[name])
            data["notices"] = _alert_notices(area_alerts[name])
    edges, nodes, tail, _ = _grouped(edges, nodes, p["metric"], cfg["MAX_NODES"], [INTERNET], "areas")
    updated = p["win"].end * 1000
    return vz.view("global", "edge", _vz_nodes(nodes, "region", updated),
                   _vz_connections(edges, p["metric"]), metadata=_meta(p, grouped=len(tail)),
                   notices=_tail_notice(tail, "areas"))


# -- region: one area --------------------------------------------------------

def area_view(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any], area: str) -> dict[str, Any]:
    """The area's services (class ``area``), their neighbours (``other``), alerting ones (``alert``)."""
    catalog = _catalog(store)
    if area not in catalog["areas"] and area not in (INTERNET, UNASSIGNED):
        raise ApiError(404, f"no business area named {area!r}")
    rows = [r for r in _rows(store, cfg, p) if r["s_area"] == area or r["d_area"] == area]
    alerts = _alerting(store, p["win"].end)
    nodes: dict[str, dict[str, Any]] = {}
    for name, svc in catalog["services"].items():
        if svc["area"] == area:
            nodes[name] = {"kind": "service", "area": area}
    for r in rows:
        for side in ("s", "d"):
            nodes.setdefault(r[f"{side}_name"], {"kind": r[f"{side}_kind"], "area": r[f"{side}_area"]})
    for name, data in nodes.items():
        if alerts.get(name):
            data["cls"] = "alert"
            data["alerts"] = len(alerts[name])
            data["notices"] = _alert_notices(alerts[name])
        else:
            # Externals drawn in the area are still not its services.
            data["cls"] = "area" if data["area"] == area and data["kind"] == "service" else "other"
    edges = g.contract(rows, lambda r, side: r[f"{side}_name"])
    own = sorted(n for n, d in nodes.items() if d["area"] == area and d["kind"] == "service")
    edges, nodes, tail, _ = _grouped(edges, nodes, p["metric"], cfg["MAX_NODES"], [INTERNET, *own],
                                     "services")
    updated = p["win"].end * 1000
    return vz.view("region", area, _vz_nodes(nodes, "focused", updated),
                   _vz_connections(edges, p["metric"]), metadata=_meta(p, area=area, grouped=len(tail)),
                   notices=_tail_notice(tail, "services"))


# -- global: datacenters -----------------------------------------------------

def datacenters_view(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    """Datacenters/zones and INTERNET with the traffic between them (Vizceral ``global``).
    TCP only: a span does not say which datacenter it ran in."""
    rows = _rows(store, cfg, p, calls=False)
    edges = g.contract(rows, lambda r, side: r[f"{side}_dc"] or INTERNET)
    nodes: dict[str, dict[str, Any]] = {INTERNET: {"cls": "normal", "kind": "internet"}}
    for (src, dst) in edges:
        for n in (src, dst):
            nodes.setdefault(n, {"cls": "normal", "kind": "dc"})
    for name, data in nodes.items():
        internal = edges.get((name, name))
        data["internal"] = g.metric_value(internal.values, p["metric"]) if internal else 0.0
    edges, nodes, tail, _ = _grouped(edges, nodes, p["metric"], cfg["MAX_NODES"], [INTERNET],
                                     "datacenters")
    updated = p["win"].end * 1000
    return vz.view("global", "datacenters", _vz_nodes(nodes, "region", updated),
                   _vz_connections(edges, p["metric"]), metadata=_meta(p, grouped=len(tail)),
                   notices=_tail_notice(tail, "datacenters"))


# -- focused: one service ----------------------------------------------------

def _require_service(store: Any, service: str, rows: Iterable[Mapping[str, Any]] = ()) -> None:
    """404 unless ``service`` is a node: one end of the view's ``rows`` (no
    query then), or anything the store knows by that name."""
    if any(service in (r["s_name"], r["d_name"]) for r in rows):
        return
    if not q.service_exists(store, service):
        raise ApiError(404, f"no service named {service!r} in the catalog or the records")


def service_view(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The service's instances (class ``area``) and the services they talk to (``other``)."""
    rows = _rows(store, cfg, p, instances_of=service)
    _require_service(store, service, rows)
    alerts = _alerting(store, p["win"].end)
    nodes: dict[str, dict[str, Any]] = {}
    peers: set[str] = set()
    for r in rows:
        for side in ("s", "d"):
            if r[f"{side}_name"] != service:
                peers.add(r[f"{side}_name"])
    inst_name: dict[str, str] = {}

    def instance(inst: str) -> str:
        if inst not in inst_name:
            name = inst if inst not in peers else f"{inst} ({service})"
            inst_name[inst] = name
            nodes[name] = {"kind": "instance", "instance": inst, "service": service, "cls": "area",
                           "display": inst}
        return inst_name[inst]

    def key(r: Mapping[str, Any], side: str) -> str:
        if r[f"{side}_name"] == service:
            if not r[f"{side}_inst"]:
                # Calls traces saw: a span does not say which instance made them.
                name = f"{service} (traced calls)"
                nodes.setdefault(name, {"kind": "traced", "service": service, "cls": "area",
                                        "display": "traced calls"})
                return name
            return instance(r[f"{side}_inst"])
        name = r[f"{side}_name"]
        if name not in nodes:
            nodes[name] = {"kind": r[f"{side}_kind"], "area": r[f"{side}_area"],
                           "cls": "alert" if alerts.get(name) else "other"}
            if alerts.get(name):
                nodes[name]["notices"] = _alert_notices(alerts[name])
        return name

    edges = g.contract(rows, key)
    own = sorted(n for n, d in nodes.items() if d["kind"] in ("instance", "traced"))
    if alerts.get(service):
        for n in own:
            nodes[n]["notices"] = _alert_notices(alerts[service])
    edges, nodes, tail, _ = _grouped(edges, nodes, p["metric"], cfg["MAX_NODES"], [INTERNET, *own],
                                     "nodes")
    updated = p["win"].end * 1000
    return vz.view("focused", service, _vz_nodes(nodes, None, updated),
                   _vz_connections(edges, p["metric"]),
                   metadata=_meta(p, service=service, grouped=len(tail)),
                   notices=_tail_notice(tail, "nodes"))


def _links(text: str | None) -> list[dict[str, Any]]:
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return []
    return links if isinstance(links, list) else []


def _deps(rows: Iterable[Mapping[str, Any]], service: str, side: str) -> list[dict[str, Any]]:
    other = "s" if side == "d" else "d"
    mine = [r for r in rows if r[f"{side}_name"] == service and r[f"{other}_name"] != service
            or (r["s_name"] == service and r["d_name"] == service)]
    edges = g.contract(mine, lambda r, s: r[f"{s}_name"] if s == other else "")
    kinds = {r[f"{other}_name"]: (r[f"{other}_kind"], r[f"{other}_area"]) for r in mine}
    out = []
    for (a, b), e in edges.items():
        name = a if other == "s" else b
        v = e.values
        out.append({"name": name, "kind": kinds[name][0], "area": kinds[name][1],
                    "open": v["open"], "conn_rate": v["conn_rate"], "fail_rate": v["fail_rate"],
                    "connects": v["connects"], "failures": v["failures"], "bytes": v["bytes"],
                    "failure_ratio": e.failure_ratio, "provenance": e.provenance, "calls": v["calls"],
                    "call_rate": v["call_rate"], "call_errors": v["call_errors"],
                    "call_mean_ms": v["call_us"] / v["calls"] / 1000 if v["calls"] else None})
    return sorted(out, key=lambda d: (-d["open"], -d["conn_rate"], -d["call_rate"], d["name"]))


def service_summary(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The side panel: instances, dependencies both ways, first/last seen, alerts, links."""
    rows = [r for r in _rows(store, cfg, p) if service in (r["s_name"], r["d_name"])]
    _require_service(store, service, rows)
    catalog = _catalog(store)
    svc = catalog["services"].get(service)
    area = catalog["areas"].get(svc["area"]) if svc else None
    links = _links(svc["links"]) if svc else []
    if area:
        links += [dict(link, inherited_from=area["name"]) for link in _links(area["links"])]
    return {
        "service": service,
        "area": svc["area"] if svc else UNASSIGNED,
        "catalog": ({k: svc[k] for k in ("title", "owner", "tier", "description")} if svc else None),
        "links": links,
        "instances": _cache().get(("instances", store.db, service, p["win"]),
                                  lambda: q.service_instances(store, service, p["win"]), p["win"].end),
        "inbound": _deps(rows, service, "d"),
        "outbound": _deps(rows, service, "s"),
        **_cache().get(("seen", store.db, service), lambda: q.service_seen(store, service)),
        "alerts": _alerting(store, p["win"].end).get(service, []),
        # what distributed tracing saw (Zipkin spans), beside what TCP saw
        "traced_calls": _cache().get(("traces", store.db, service, p["win"]),
                                     lambda: q.trace_calls(store, service, p["win"]), p["win"].end),
        "processes": sorted(n for n, a in catalog["areas"].items()
                            if a["kind"] == "process" and service in a["services"]),
        "meta": _meta(p),
    }


def service_impact(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any], service: str) -> dict[str, Any]:
    """Upstream/downstream of a service at T, with the areas and processes it affects."""
    rows = _rows(store, cfg, p)
    _require_service(store, service, rows)
    graph = g.service_graph(rows, p["metric"])
    catalog = _catalog(store)
    processes = {n: a["services"] for n, a in catalog["areas"].items() if a["kind"] == "process"}
    result = g.impact(graph, service, processes)
    result["meta"] = _meta(p)
    return result


def graph_diff(store: Any, cfg: Mapping[str, Any], p: Mapping[str, Any], before_at: int,
               min_change: float, min_volume: float) -> dict[str, Any]:
    """New, vanished and changed service edges between ``before_at`` and ``at``."""
    before_win = Window.at(before_at, p["window"])
    before = _rows(store, cfg, p, win=before_win)
    after = _rows(store, cfg, p)
    out = g.diff(before, after, p["metric"], min_change=min_change, min_volume=min_volume)
    old_nodes = {r[f"{s}_name"] for r in before for s in ("s", "d")}
    new_nodes = {r[f"{s}_name"] for r in after for s in ("s", "d")}
    out["services"] = {"new": sorted(new_nodes - old_nodes), "vanished": sorted(old_nodes - new_nodes)}
    out["meta"] = {"from": _iso(before_win.end), "to": _iso(p["win"].end), "window": p["win"].seconds,
                   "metric": p["metric"], "dc": p.get("dc"), "min_change": min_change,
                   "min_volume": min_volume}
    return out
