"""The JSON reports beside the maps: a service's summary and impact, and what changed between two times.

They start from the same resolved rows as the maps (``ViewContext.rows``)
and read the graph model (``graph.py``): dependencies of a service by
contraction, its impact by networkx ancestors and descendants, a diff by
comparing two contractions.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from api.catalog.lookups import UNASSIGNED
from api.resolution.tcp import Window
from api.views import graph, health, reads
from api.views.context import ViewContext
from api.views.params import ViewParams
from tracer.records import format_ts

__all__ = ["service_summary", "service_impact", "graph_diff"]


def _links(text: str | None) -> list[dict[str, Any]]:
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return []
    return links if isinstance(links, list) else []


def _deps(rows: Iterable[Mapping[str, Any]], service: str, side: str, t: health.Thresholds) -> list[dict[str, Any]]:
    other = "s" if side == "d" else "d"
    mine = [r for r in rows if r[f"{side}_name"] == service and r[f"{other}_name"] != service
            or (r["s_name"] == service and r["d_name"] == service)]
    edges = graph.contract(mine, lambda r, s: r[f"{s}_name"] if s == other else "")
    kinds = {r[f"{other}_name"]: (r[f"{other}_kind"], r[f"{other}_area"]) for r in mine}
    out = []
    for (a, b), e in edges.items():
        name = a if other == "s" else b
        v = e.values
        cls, why = health.assess(v, t)
        out.append({"name": name, "kind": kinds[name][0], "area": kinds[name][1], "class": cls, "reasons": why,
                    "open": v["open"], "conn_rate": v["conn_rate"], "fail_rate": v["fail_rate"],
                    "connects": v["connects"], "failures": v["failures"], "bytes": v["bytes"],
                    "failure_ratio": e.failure_ratio, "provenance": e.provenance, "calls": v["calls"],
                    "call_rate": v["call_rate"], "call_errors": v["call_errors"],
                    "call_mean_ms": v["call_us"] / v["calls"] / 1000 if v["calls"] else None,
                    **health.figures(v)})
    return sorted(out, key=lambda d: (-d["open"], -d["conn_rate"], -d["call_rate"], d["name"]))


def _total(rows: Iterable[Mapping[str, Any]], side: str, service: str) -> dict[str, Any]:
    """The values of every row with ``service`` at ``side``, summed into one edge's."""
    edges = graph.contract([r for r in rows if r[f"{side}_name"] == service], lambda r, s: service)
    return edges.get((service, service), graph.Edge(service, service)).values


def _traced_calls(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The calls in ``rows`` by caller and callee, most first."""
    sums: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        if r["calls"] > 0:
            have = sums.setdefault((r["s_name"], r["d_name"]), [0, 0, 0])
            have[0] += r["calls"]
            have[1] += r["call_errors"]
            have[2] += r["call_us"]
    out = [{"caller": caller, "callee": callee, "calls": n, "errors": e, "mean_ms": d / n / 1000}
           for (caller, callee), (n, e, d) in sums.items()]
    out.sort(key=lambda c: (-c["calls"], c["caller"], c["callee"]))
    return out[:1000]


def service_summary(ctx: ViewContext, p: ViewParams, service: str) -> dict[str, Any]:
    """The side panel: instances, dependencies both ways, first/last seen, alerts, links."""
    rows, instances, seen, _ = ctx.gather(
        lambda: ctx.rows(p, touching=service),
        lambda: ctx.cached(("instances", service, p.win),
                           lambda: reads.service_instances(ctx.store, service, p.win), p.win.end),
        lambda: ctx.cached(("seen", service), lambda: reads.service_seen(ctx.store, service)),
        lambda: ctx.alerting(p.win.end))
    ctx.require_service(service, rows)
    t = health.Thresholds.of(ctx)
    catalog = ctx.catalog(p.win)
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
        "instances": instances,
        "inbound": _deps(rows, service, "d", t),
        "outbound": _deps(rows, service, "s", t),
        # the connections into it and out of it, all clients or servers together
        "health": {"inbound": health.figures(_total(rows, "d", service)),
                   "outbound": health.figures(_total(rows, "s", service))},
        **seen,
        "alerts": ctx.alerting(p.win.end).get(service, []),
        # what distributed tracing saw (Zipkin spans), beside what TCP saw
        "traced_calls": _traced_calls(rows),
        "processes": sorted(n for n, a in catalog["areas"].items()
                            if a["kind"] == "process" and service in a["services"]),
        "meta": p.meta(),
    }


def service_impact(ctx: ViewContext, p: ViewParams, service: str) -> dict[str, Any]:
    """Upstream/downstream of a service at T, with the areas and processes it affects."""
    rows = ctx.rows(p)
    ctx.require_service(service, rows)
    services = graph.service_graph(rows, p.metric)
    processes = {n: a["services"] for n, a in ctx.catalog(p.win)["areas"].items() if a["kind"] == "process"}
    result = graph.impact(services, service, processes)
    result["meta"] = p.meta()
    return result


def _diff_scope(rows: list[dict[str, Any]], area: str | None, service: str | None) -> list[dict[str, Any]]:
    """The rows a view draws: those touching ``service``, else ``area``'s, else all."""
    if service:
        return [r for r in rows if service in (r["s_name"], r["d_name"])]
    if area:
        return [r for r in rows if area in (r["s_area"], r["d_area"])]
    return rows


def _by_area(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows renamed to their areas, so the service-level diff compares area edges (the areas view)."""
    return [{**r, "s_name": r["s_area"], "d_name": r["d_area"]} for r in rows]


def graph_diff(ctx: ViewContext, p: ViewParams, before_at: int, min_change: float,
               min_volume: float, *, area: str | None = None, service: str | None = None,
               by: str = "service", limit: int = 200, default_from: bool = False) -> dict[str, Any]:
    """New, vanished and changed edges between ``before_at`` and ``at``.

    ``area`` / ``service`` restrict both times to the edges the area's or the
    service's view draws (a fleet-wide list buries the open view's changes);
    ``by="area"`` compares area edges, as the areas view draws them.
    ``ranked`` merges the three lists by absolute change, largest first: a
    vanished edge of 355 connections comes before 27 new ones of 0.2.
    """
    if service:
        ctx.require_service(service)
    before_win = Window.at(before_at, p.window)
    before, after = (_diff_scope(rows, area, service)
                     for rows in ctx.gather(lambda: ctx.rows(p, win=before_win), lambda: ctx.rows(p)))
    areas = {r[f"{s}_name"]: r[f"{s}_area"] for r in (*before, *after) for s in ("s", "d")}
    if by == "area":
        before, after = _by_area(before), _by_area(after)
    out = graph.diff(before, after, p.metric, min_change=min_change, min_volume=min_volume)
    old_nodes = {r[f"{s}_name"] for r in before for s in ("s", "d")}
    new_nodes = {r[f"{s}_name"] for r in after for s in ("s", "d")}
    ranked = []
    for kind in ("new", "vanished", "changed"):
        for item in out[kind]:
            if by == "service":
                item["source_area"] = areas.get(item["source"])
                item["target_area"] = areas.get(item["target"])
            ranked.append({**item, "kind": kind, "delta": item["after"] - item["before"]})
    ranked.sort(key=lambda i: (-abs(i["delta"]), i["source"], i["target"]))
    out["ranked"] = ranked[:limit]
    out["counts"] = {kind: len(out[kind]) for kind in ("new", "vanished", "changed")}
    out["services" if by == "service" else "areas"] = {
        "new": sorted(new_nodes - old_nodes), "vanished": sorted(old_nodes - new_nodes)}
    out["meta"] = {"from": format_ts(before_win.end), "to": format_ts(p.win.end), "window": p.win.seconds,
                   "metric": p.metric, "dc": p.dc, "min_change": min_change, "min_volume": min_volume,
                   "area": area, "service": service, "by": by, "limit": limit, "default_from": default_from}
    return out
