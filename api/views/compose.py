"""The four maps - areas, one area, datacenters, one service - made by one composer.

Every map is the same pipeline, run by ``compose``:

1. **rows** - the window's resolved rows (``ViewContext.rows``), those the
   map ``keeps``;
2. **nodes** - what the map always draws (``seed``), then each group a row
   reaches (``group`` names it, ``node`` gives its data) while the rows are
   contracted into edges between groups (``graph.contract``);
3. **alerts** - each node's class, alerts and notices (``mark``), and with
   ``internal`` the traffic that stays inside it;
4. **health** - each edge's and node's class from failed connects
   (``api.views.health.classify``): an unhealthy node is drawn ``danger``
   or ``warning`` unless it is alerting, which it stays;
5. **group** - the long tail folded into one "N more" node, sparing the
   nodes the map names in ``keep`` and every unhealthy or alerting node;
6. **serialise** - one Vizceral level (``vizceral.view``) whose nodes the
   ``child_renderer`` draws.

A ``Map`` holds what differs; ``areas_view``, ``area_view``,
``datacenters_view`` and ``service_view`` each make one from the request and
the catalog and alerts it needs.  The JSON reports beside the maps
(summary, impact, diff) are ``reports.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from api.catalog.lookups import INTERNET, UNASSIGNED
from api.errors import ApiError
from api.views import graph, health, vizceral
from api.views.context import ViewContext
from api.views.params import ViewParams

__all__ = ["Map", "compose", "areas_view", "area_view", "datacenters_view", "service_view"]

Row = Mapping[str, Any]
Nodes = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Map:
    """What one map does differently (see the module docstring)."""

    renderer: str                                  # Vizceral renderer of this level
    name: str                                      # the level's name
    child_renderer: str | None                     # renderer its nodes open with
    what: str                                      # what its "N more" node holds
    group: Callable[[Row, str], str]               # row, side ("s"/"d") -> the node of that end
    node: Callable[[Row, str], dict[str, Any]]     # data of a node first met in a row
    seed: Nodes = field(default_factory=dict)      # nodes drawn with or without traffic
    keeps: Callable[[Row], bool] | None = None     # the rows of the map (None: all)
    mark: Callable[[str, dict[str, Any]], None] | None = None  # class, alerts, notices of a node
    keep: Callable[[Nodes], list[str]] = lambda nodes: [INTERNET]  # never folded into "N more"
    internal: bool = False                         # show each node's traffic within itself
    rows: Mapping[str, Any] = field(default_factory=dict)  # options of ``reads.graph_rows``
    meta: Mapping[str, Any] = field(default_factory=dict)  # extra metadata of the view


def compose(ctx: ViewContext, p: ViewParams, m: Map, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Vizceral level of map ``m`` (``rows``: the map's rows when the caller already read them)."""
    if rows is None:
        rows = ctx.rows(p, **m.rows)
    # A node's health is what it serves in the whole window, also through edges this map does not draw.
    every_row = rows
    if m.keeps is not None:
        rows = [r for r in rows if m.keeps(r)]
    nodes: Nodes = {name: dict(data) for name, data in m.seed.items()}

    def group(row: Row, side: str) -> str:
        name = m.group(row, side)
        if name not in nodes:
            nodes[name] = m.node(row, side)
        return name

    edges = graph.contract(rows, group)
    found = health.classify(every_row, m.group, edges, health.Thresholds.of(ctx))
    for name, data in nodes.items():
        if m.internal:
            inside = edges.get((name, name))
            data["internal"] = graph.metric_value(inside.values, p.metric) if inside else 0.0
        if m.mark is not None:
            m.mark(name, data)
        _mark_health(data, found.nodes.get(name, "normal"))
    spared = sorted((n for n, d in nodes.items() if _severity(d)), key=lambda n: (-_severity(nodes[n]), n))
    keep = [k for k in m.keep(nodes) if k == INTERNET] + spared + m.keep(nodes)
    edges, nodes, tail, classes = _fold_tail(edges, nodes, p.metric, ctx.max_nodes, keep, m.what, found.edges)
    return vizceral.view(m.renderer, m.name, vizceral.nodes_of(nodes, m.child_renderer, p.win.end * 1000),
                         vizceral.connections_of(edges, p.metric, classes, found.worst_rows, found.reasons),
                         metadata=p.meta(**m.meta, grouped=len(tail), health=health.Thresholds.of(ctx).meta()),
                         notices=vizceral.tail_notices(tail, m.what))


#: Node classes that stand for trouble, and how bad (what "N more" never hides).
_TROUBLE = {"alert": 3, "danger": 2, "warning": 1}


def _mark_health(data: dict[str, Any], cls: str) -> None:
    """Record a node's health and draw it in its class, unless it is alerting (alerts outrank failures)."""
    data["health"] = cls
    if cls != "normal" and not data.get("alerts"):
        data["cls"] = cls


def _severity(data: Mapping[str, Any]) -> int:
    return 3 if data.get("alerts") else _TROUBLE.get(data.get("cls", "normal"), 0)


def _fold_tail(edges: dict[tuple[str, str], graph.Edge], nodes: Nodes, metric: str, max_nodes: int,
               keep: Iterable[str], what: str, classes: Mapping[tuple[str, str], str]
               ) -> tuple[dict[tuple[str, str], graph.Edge], Nodes, list[str], dict[tuple[str, str], str]]:
    """Fold the long tail of ``nodes`` into one "N more" node; the nodes folded, the edges' classes after."""
    volumes = {n: 0.0 for n in nodes}
    volumes.update({n: v for n, v in graph.node_volumes(edges, metric).items() if n in nodes})
    kept, tail = graph.long_tail(volumes, max_nodes, list(dict.fromkeys(keep)))
    if not tail:
        return edges, nodes, [], dict(classes)
    name = f"{len(tail)} more {what}"
    while name in nodes:
        name += "+"
    folded: dict[tuple[str, str], graph.Edge] = {}
    folded_classes: dict[tuple[str, str], str] = {}
    for (src, dst), edge in edges.items():
        key = (src if src in kept else name, dst if dst in kept else name)
        target = folded.get(key)
        if target is None:
            target = folded[key] = graph.Edge(*key)
        target.add(edge.values)
        if (src, dst) in classes:
            folded_classes[key] = health.worst(folded_classes.get(key, "normal"), classes[(src, dst)])
    new_nodes = {n: d for n, d in nodes.items() if n in kept}
    new_nodes[name] = {"cls": "normal", "grouped": tail}
    return folded, new_nodes, tail, folded_classes


def _side(key: str) -> Callable[[Row, str], str]:
    """The group of a row's end is its ``{side}_{key}`` column."""
    return lambda row, side: row[f"{side}_{key}"]


# -- global: areas ---------------------------------------------------------------------------

def areas_view(ctx: ViewContext, p: ViewParams) -> dict[str, Any]:
    """Business areas and INTERNET with the traffic between them (Vizceral ``global``)."""
    ctx.prefetch(p)
    catalog = ctx.catalog(p.win)
    by_area: dict[str, list] = defaultdict(list)
    for service, items in ctx.alerting(p.win.end).items():
        by_area[catalog["services"].get(service, {}).get("area") or UNASSIGNED].extend(items)
    seed = {INTERNET: {"cls": "normal", "kind": "internet"}}
    seed.update({name: {"cls": "normal", "kind": "area", "display": area["title"] or name}
                 for name, area in catalog["areas"].items() if area["kind"] == "area"})

    def mark(name: str, data: dict[str, Any]) -> None:
        if by_area.get(name):
            data.update(cls="danger", alerts=len(by_area[name]), notices=vizceral.alert_notices(by_area[name]))

    return compose(ctx, p, Map("global", "edge", "region", "areas", group=_side("area"),
                               node=lambda row, side: {"cls": "normal", "kind": "area"},
                               seed=seed, mark=mark, internal=True))


# -- region: one area ------------------------------------------------------------------------

def area_view(ctx: ViewContext, p: ViewParams, area: str) -> dict[str, Any]:
    """The area's services (class ``area``), their neighbours (``other``), alerting ones (``alert``)."""
    ctx.prefetch(p)
    catalog = ctx.catalog(p.win)
    if area not in catalog["areas"] and area not in (INTERNET, UNASSIGNED):
        raise ApiError(404, f"no business area named {area!r}")
    alerts = ctx.alerting(p.win.end)

    def mark(name: str, data: dict[str, Any]) -> None:
        if alerts.get(name):
            data.update(cls="alert", alerts=len(alerts[name]), notices=vizceral.alert_notices(alerts[name]))
        else:
            # Externals drawn in the area are still not its services.
            data["cls"] = "area" if _own(data, area) else "other"

    return compose(ctx, p, Map(
        "region", area, "focused", "services", group=_side("name"),
        node=lambda row, side: {"kind": row[f"{side}_kind"], "area": row[f"{side}_area"]},
        seed={name: {"kind": "service", "area": area} for name, svc in catalog["services"].items()
              if svc["area"] == area},
        keeps=lambda row: row["s_area"] == area or row["d_area"] == area, mark=mark,
        keep=lambda nodes: [INTERNET, *sorted(n for n, d in nodes.items() if _own(d, area))],
        meta={"area": area}))


def _own(data: Mapping[str, Any], area: str) -> bool:
    return data["area"] == area and data["kind"] == "service"


# -- global: datacenters ---------------------------------------------------------------------

def datacenters_view(ctx: ViewContext, p: ViewParams) -> dict[str, Any]:
    """Datacenters/zones and INTERNET with the traffic between them (Vizceral ``global``).
    TCP only: a span does not say which datacenter it ran in."""
    return compose(ctx, p, Map("global", "datacenters", "region", "datacenters",
                               group=lambda row, side: row[f"{side}_dc"] or INTERNET,
                               node=lambda row, side: {"cls": "normal", "kind": "dc"},
                               seed={INTERNET: {"cls": "normal", "kind": "internet"}}, internal=True,
                               rows={"datacenters": True}))


# -- focused: one service --------------------------------------------------------------------

def service_view(ctx: ViewContext, p: ViewParams, service: str) -> dict[str, Any]:
    """The service's instances (class ``area``) and the services they talk to (``other``)."""
    rows, alerts = ctx.gather(lambda: ctx.rows(p, instances_of=service), lambda: ctx.alerting(p.win.end))
    ctx.require_service(service, rows)
    peers = {r[f"{side}_name"] for r in rows for side in ("s", "d") if r[f"{side}_name"] != service}
    own_area = next((r[f"{side}_area"] for r in rows for side in ("s", "d") if r[f"{side}_name"] == service),
                    UNASSIGNED)

    def group(row: Row, side: str) -> str:
        if row[f"{side}_name"] != service:
            return row[f"{side}_name"]
        inst = row[f"{side}_inst"]
        if not inst:
            return f"{service} (traced calls)"  # a span does not say which instance made a call
        return inst if inst not in peers else f"{inst} ({service})"

    def node(row: Row, side: str) -> dict[str, Any]:
        if row[f"{side}_name"] != service:
            return {"kind": row[f"{side}_kind"], "area": row[f"{side}_area"]}
        inst = row[f"{side}_inst"]
        if not inst:
            return {"kind": "traced", "service": service, "cls": "area", "display": "traced calls"}
        return {"kind": "instance", "instance": inst, "service": service, "cls": "area", "display": inst}

    def mark(name: str, data: dict[str, Any]) -> None:
        if _instance(data):
            if alerts.get(service):
                data["notices"] = vizceral.alert_notices(alerts[service])
        else:
            # A peer of the service's own area is drawn as the area's, as the legend says.
            data["cls"] = "alert" if alerts.get(name) else "area" if _own(data, own_area) else "other"
            if alerts.get(name):
                data["notices"] = vizceral.alert_notices(alerts[name])

    return compose(ctx, p, Map(
        "focused", service, None, "nodes", group=group, node=node, mark=mark,
        keep=lambda nodes: [INTERNET, *sorted(n for n, d in nodes.items() if _instance(d))],
        meta={"service": service}), rows)


def _instance(data: Mapping[str, Any]) -> bool:
    return data["kind"] in ("instance", "traced")
