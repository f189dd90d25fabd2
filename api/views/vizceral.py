"""Serialisation of graphs to Vizceral 4.9 JSON, kept apart from the graph model - all of it.

Vizceral draws a tree of nodes: a ``global`` view whose nodes are regions
(``renderer: "region"``), each region's nodes drawn by the ``region``
renderer and a node's own detail by ``focused``.  Every API view returns one
such level as a stand-alone object whose ``renderer`` says how to draw it;
the web page nests them as it drills down.  ``view``, ``node``,
``connection`` and ``notice`` build the format's objects; ``nodes_of`` and
``connections_of`` turn a map's nodes and contracted edges
(``api.views.graph.Edge``) into them, ``alert_notices`` and ``tail_notices``
say what a map's nodes and its "N more" node hide.

Rules of the format that the builders below keep (and ``SCHEMA`` checks):
node names are unique within a level (connections refer to them);
``metrics`` of a connection are requests per second split into ``normal``,
``warning`` and ``danger`` (Phobos puts failed connects in ``danger``);
a connection's ``class`` is its health (``api.views.health``), which
Vizceral 4.9 does not draw by itself - the page colours unhealthy edges;
``maxVolume`` scales the particles and must be positive.  Vizceral inserts
``notices`` into the page as raw HTML, so every notice text is escaped here
- names come from hosts and processes nobody vetted.
"""

from __future__ import annotations

import html
import time
from typing import Any, Iterable, Mapping

from api.views import health
from api.views.graph import Edge

__all__ = ["SCHEMA", "notice", "node", "connection", "view", "edge_metrics", "edge_metadata",
           "nodes_of", "connections_of", "alert_notices", "tail_notices"]


def notice(title: str, severity: int = 0, link: str | None = None) -> dict[str, Any]:
    """A notice, escaped: Vizceral puts ``title`` into the DOM as HTML."""
    out: dict[str, Any] = {"title": html.escape(str(title), quote=True), "severity": int(severity)}
    if link and link.startswith(("http://", "https://")):
        out["link"] = html.escape(link, quote=True)
    return out


def node(name: str, *, cls: str = "normal", renderer: str | None = None, display: str | None = None,
         metadata: Mapping[str, Any] | None = None, notices: Iterable[Mapping[str, Any]] = (),
         max_volume: float | None = None, updated: int | None = None) -> dict[str, Any]:
    """One Vizceral node."""
    out: dict[str, Any] = {"name": name, "displayName": display or name, "class": cls}
    if renderer:
        out["renderer"] = renderer
    if max_volume is not None:
        out["maxVolume"] = max_volume
    if updated is not None:
        out["updated"] = updated
    if metadata:
        out["metadata"] = dict(metadata)
    notices = list(notices)
    if notices:
        out["notices"] = notices
    return out


def edge_metrics(values: Mapping[str, float], metric: str) -> dict[str, float]:
    """Vizceral ``metrics`` of an edge for the chosen metric.

    ``open``: open connections as ``normal``, failed connects per second as
    ``danger`` (so a failing edge shows red particles whatever its size);
    ``connects``: successful new connections per second as ``normal``,
    failed ones as ``danger``; ``failures``: failed connects only.

    An edge only traces saw has no connections to show: its calls per
    second go into a class of their own, ``traced`` (drawn in a colour of
    its own), failed calls into ``danger``.
    """
    if not (values.get("connects") or values.get("open") or values.get("bytes")) and values.get("calls"):
        rate = float(values.get("call_rate") or 0)
        failed = rate * float(values.get("call_errors") or 0) / float(values["calls"])
        traced = 0.0 if metric == "failures" else rate - failed
        return {"normal": 0.0, "warning": 0.0, "danger": round(failed, 6), "traced": round(traced, 6)}
    fail = float(values.get("fail_rate") or 0)
    if metric == "open":
        normal = float(values.get("open") or 0)
    elif metric == "connects":
        normal = max(float(values.get("conn_rate") or 0) - fail, 0.0)
    else:
        normal = 0.0
    return {"normal": round(normal, 6), "warning": 0.0, "danger": round(fail, 6)}


def connection(source: str, target: str, values: Mapping[str, float], metric: str,
               metadata: Mapping[str, Any] | None = None, cls: str | None = None,
               worst: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One Vizceral connection (``source`` depends on ``target``).

    ``cls``: its health class (``api.views.health``; default: from its own
    failure ratio); ``worst``: the worst row behind it, named in a notice
    when it is not the edge itself (one failing pair inside an area edge).
    """
    cls = cls or health.edge_class(values)
    out: dict[str, Any] = {
        "source": source,
        "target": target,
        "metrics": edge_metrics(values, metric),
        "class": cls,
    }
    severity = {"danger": 2, "warning": 1}.get(cls, 0)
    tried, failed = health.attempts(values)
    notices = []
    if failed:
        what = "connects" if values.get("connects") else "calls"
        notices.append(notice(f"{int(failed)} of {int(tried)} {what} failed ({failed / tried:.1%})", severity))
    if worst is not None and health.pair_names(worst) != (source, target):
        w_tried, w_failed = health.attempts(worst)
        w_src, w_dst = health.pair_names(worst)
        notices.append(notice(f"worst pair {w_src} \u2192 {w_dst}: {int(w_failed)} of "
                              f"{int(w_tried)} failed ({w_failed / w_tried:.1%})", severity))
    if notices:
        out["notices"] = notices
    if metadata:
        out["metadata"] = dict(metadata)
    return out


def view(renderer: str, name: str, nodes: list[dict[str, Any]], connections: list[dict[str, Any]],
         *, metadata: Mapping[str, Any] | None = None,
         notices: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A complete view (one level of the Vizceral tree).

    Raises
    ------
    ValueError
        On duplicate node names or connections to unknown nodes: both make
        Vizceral draw nonsense silently, so they are bugs to catch here.
    """
    names = [n["name"] for n in nodes]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate node names {dup[:5]}")
    known = set(names)
    for c in connections:
        if c["source"] not in known or c["target"] not in known:
            raise ValueError(f"connection {c['source']!r} -> {c['target']!r} names an unknown node")
    volume = max((sum(c["metrics"].values()) for c in connections), default=0.0)
    out: dict[str, Any] = {
        "renderer": renderer,
        "name": name,
        "displayName": name,
        "maxVolume": max(volume * 1.5, 1e-3),
        "updated": int(time.time() * 1000),
        "serverUpdateTime": int(time.time() * 1000),
        "nodes": nodes,
        "connections": connections,
    }
    notices = list(notices)
    if notices:
        out["notices"] = notices
    if metadata:
        out["metadata"] = dict(metadata)
    return out



# -- a map's nodes and edges ----------------------------------------------------------------

def nodes_of(nodes: Mapping[str, Mapping[str, Any]], renderer: str | None, updated: int) -> list[dict[str, Any]]:
    """Vizceral nodes of a map's ``nodes`` (name -> data), sorted by name.

    ``cls``, ``display`` and ``notices`` of the data become the node's
    class, display name and notices; the rest is its ``metadata`` (a
    grouped node lists at most 200 of the names it holds, and how many).
    """
    out = []
    for name in sorted(nodes):
        data = nodes[name]
        meta = {k: v for k, v in data.items() if k not in ("cls", "notices", "display")}
        if "grouped" in meta:
            meta["grouped"] = meta["grouped"][:200]
            meta["grouped_count"] = len(data["grouped"])
        out.append(node(name, cls=data.get("cls", "normal"), renderer=renderer, display=data.get("display"),
                        metadata=meta, notices=data.get("notices", ()), updated=updated))
    return out


def edge_metadata(edge: Edge) -> dict[str, Any]:
    """What an edge's side panel shows: both sources' volumes, its health figures and who saw it."""
    v = edge.values
    tried, failed = health.attempts(v)
    return {"provenance": edge.provenance, "connects": v["connects"], "failures": v["failures"],
            "failure_ratio": round(failed / tried, 6) if tried else 0.0,
            "open": round(v["open"], 6), "conn_rate": round(v["conn_rate"], 6), "bytes": v["bytes"],
            **health.figures(v),
            "calls": v["calls"], "call_errors": v["call_errors"], "call_rate": round(v["call_rate"], 6),
            "call_mean_ms": round(v["call_us"] / v["calls"] / 1000, 3) if v["calls"] else None}


def connections_of(edges: Mapping[tuple[str, str], Edge], metric: str,
                   classes: Mapping[tuple[str, str], str] | None = None,
                   worst: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
                   reasons: Mapping[tuple[str, str], list[str]] | None = None) -> list[dict[str, Any]]:
    """Vizceral connections of contracted edges, sorted; an edge inside one node is not drawn.

    ``classes``: health class by edge (``api.views.health.classify``; an
    edge not in it is ``normal``); ``worst``: the worst row behind an edge.
    """
    classes = classes if classes is not None else {k: health.edge_class(e.values) for k, e in edges.items()}
    worst = worst or {}
    out = []
    for (s, d), e in sorted(edges.items()):
        if s == d:
            continue
        cls = classes.get((s, d), "normal")
        meta = edge_metadata(e)
        meta["class"] = cls
        meta["reasons"] = list((reasons or {}).get((s, d), ()))
        pair = worst.get((s, d))
        if pair is not None and health.pair_names(pair) == (s, d):
            pair = None  # the edge is its own worst pair: nothing more to say
        if pair is not None:
            w_tried, w_failed = health.attempts(pair)
            w_src, w_dst = health.pair_names(pair)
            meta["worst_pair"] = {"source": w_src, "target": w_dst, "connects": w_tried,
                                  "failures": w_failed, "failure_ratio": round(w_failed / w_tried, 6)}
        out.append(connection(s, d, e.values, metric, metadata=meta, cls=cls, worst=pair))
    return out


def alert_notices(alerts: Iterable[Mapping[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    """Notices of firing alerts (``api.views.reads.firing_alerts`` rows): the first ``limit``, then how many more."""
    alerts = list(alerts)
    out = [notice(f"{a['alertname']}: {a['summary']}" if a.get("summary") else a["alertname"],
                  severity=2 if a.get("severity") in ("critical", "page", "error") else 1)
           for a in alerts[:limit]]
    if len(alerts) > limit:
        out.append(notice(f"{len(alerts) - limit} more alerts", severity=1))
    return out


def tail_notices(tail: list[str], what: str) -> list[dict[str, Any]]:
    """The view's notice that the nodes of ``tail`` are grouped into one (none when nothing is)."""
    if not tail:
        return []
    shown = ", ".join(tail[:10]) + (" ..." if len(tail) > 10 else "")
    return [notice(f"{len(tail)} {what} with the least traffic are grouped: {shown}", severity=0)]

_METRICS = {
    "type": "object",
    "required": ["normal", "warning", "danger"],
    "properties": {k: {"type": "number", "minimum": 0} for k in ("normal", "warning", "danger")},
}
_NOTICES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": {"type": "string", "not": {"pattern": "[<>\"]"}},
            "link": {"type": "string"},
            "severity": {"type": "integer", "minimum": 0, "maximum": 2},
        },
    },
}
_NODE = {
    "type": "object",
    "required": ["name", "class"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "displayName": {"type": "string"},
        "class": {"type": "string", "minLength": 1},
        "renderer": {"enum": ["global", "region", "focused", "focusedChild", "dns"]},
        "maxVolume": {"type": "number", "exclusiveMinimum": 0},
        "updated": {"type": "integer"},
        "metadata": {"type": "object"},
        "notices": _NOTICES,
    },
}
#: JSON Schema (draft 2020-12) of one Vizceral view as the API returns it.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Vizceral 4.9 traffic graph (one level)",
    "type": "object",
    "required": ["renderer", "name", "maxVolume", "nodes", "connections"],
    "properties": {
        "renderer": {"enum": ["global", "region", "focused"]},
        "name": {"type": "string", "minLength": 1},
        "displayName": {"type": "string"},
        "maxVolume": {"type": "number", "exclusiveMinimum": 0},
        "updated": {"type": "integer"},
        "serverUpdateTime": {"type": "integer"},
        "metadata": {"type": "object"},
        "notices": _NOTICES,
        "nodes": {"type": "array", "items": _NODE, "maxItems": 200},
        "connections": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "metrics"],
                "properties": {
                    "source": {"type": "string", "minLength": 1},
                    "target": {"type": "string", "minLength": 1},
                    "metrics": _METRICS,
                    "class": {"type": "string"},
                    "notices": _NOTICES,
                    "metadata": {"type": "object"},
                },
            },
        },
    },
}
