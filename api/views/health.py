"""Health: an edge's class from its failures, handshake time and retransmits; nodes the worst; the problems list.

An edge is ``danger`` from ``danger`` failed connects out of every attempt
(``PHOBOS_DANGER_RATIO``), ``warning`` from ``warning``
(``PHOBOS_WARNING_RATIO``), else ``normal``; an edge that only traces saw
is classed by its failed calls.  Fewer than ``min_connects`` attempts in the
window say nothing (``PHOBOS_HEALTH_MIN_CONNECTS``): one failed connect of
two is not an incident, and without that floor some pair of a large fleet
would always turn its area red.

An edge whose connects work but slowly or lossily is ``warning``: the 95th
percentile of its handshake time at or above ``PHOBOS_WARNING_HANDSHAKE_P95_MS``
(a SYN lost once costs the client a 1 s retransmission timeout), or its
retransmitted segments at or above ``PHOBOS_WARNING_RETRANSMIT_RATIO`` of
the segments it sent (estimated from its bytes: ``retransmit_ratio``). The
same floor of samples applies. Failures stay the only way to ``danger``.

A drawn edge or node stands for many resolved rows (service pairs at the
area levels, instance pairs in a service's view), so its class is the worst
of the rows behind it as well as of its own sum: a database refusing 60 %
of its connects must turn its area red even when the area's other traffic
dilutes the area edge's ratio below the threshold.  A node takes the worst
of the rows it serves, its internal traffic included - the client of a
failing server is not itself unhealthy.

``problems`` ranks the failing service pairs and services of a window for
the page's problems list; ``edge_pairs`` lists the pairs behind one drawn
edge (services behind an area edge, instances behind a service edge).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

from api.views import graph
from api.views.context import ViewContext
from api.views.params import ViewParams
from tracer.records import handshake_quantile

__all__ = ["CLASSES", "Thresholds", "SEGMENT_BYTES", "attempts", "retransmit_ratio", "figures", "assess",
           "edge_class", "pair_names", "worst", "classify", "problems", "edge_pairs"]

#: Health classes, mildest first (Vizceral's class names: the page colours them).
CLASSES = ("normal", "warning", "danger")
_RANK = {c: i for i, c in enumerate(CLASSES)}

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Thresholds:
    """Failure ratios from which an edge is ``warning`` and ``danger``, the
    attempts it takes to tell, and the handshake time and retransmit share
    from which a working edge is ``warning`` all the same."""

    warning: float = 0.01
    danger: float = 0.05
    min_connects: int = 3
    handshake_p95_ms: float = 500.0
    retransmit_ratio: float = 0.02

    @classmethod
    def of(cls, ctx: ViewContext) -> Thresholds:
        return cls(ctx.warning_ratio, ctx.danger_ratio, ctx.health_min_connects,
                   ctx.warning_handshake_p95_ms, ctx.warning_retransmit_ratio)

    def meta(self) -> dict[str, Any]:
        return {"warning_ratio": self.warning, "danger_ratio": self.danger, "min_connects": self.min_connects,
                "warning_handshake_p95_ms": self.handshake_p95_ms,
                "warning_retransmit_ratio": self.retransmit_ratio}


#: Payload bytes per segment the retransmit share assumes (a 1,500-byte
#: MTU with TCP timestamps): the tracer counts bytes, not segments.
SEGMENT_BYTES = 1448


def attempts(values: Row) -> tuple[float, float]:
    """``(attempts, failures)`` of an edge: its connects, or its calls when only traces saw it."""
    connects = float(values.get("connects") or 0)
    if not connects and values.get("calls"):
        return float(values["calls"]), float(values.get("call_errors") or 0)
    return connects, float(values.get("failures") or 0)


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def retransmit_ratio(values: Row) -> float:
    """Retransmitted segments per segment, the segments estimated from the
    bytes (``SEGMENT_BYTES`` each) plus one per connection (its SYN)."""
    segments = float(values.get("connects") or 0) + float(values.get("bytes") or 0) / SEGMENT_BYTES
    retransmits = float(values.get("retransmits") or 0)
    return min(1.0, retransmits / segments) if segments else (1.0 if retransmits else 0.0)


def figures(values: Row) -> dict[str, Any]:
    """An edge's health beyond failures, as the page shows it: handshake
    time (p50 and p95 from its histogram, mean from its sum; None without a
    timed handshake), retransmits with their share, and aborted connections."""
    hist = values.get("handshake_hist") or []
    handshakes = int(values.get("handshakes") or 0)
    return {"handshakes": handshakes,
            "handshake_p50_ms": _ms(handshake_quantile(hist, 0.5)),
            "handshake_p95_ms": _ms(handshake_quantile(hist, 0.95)),
            "handshake_mean_ms": _ms(float(values.get("handshake_us") or 0) / handshakes) if handshakes else None,
            "retransmits": int(values.get("retransmits") or 0),
            "retransmit_ratio": round(retransmit_ratio(values), 6),
            "aborts": int(values.get("aborts") or 0)}


def assess(values: Row, t: Thresholds = Thresholds()) -> tuple[str, list[str]]:
    """The class of one edge's (or row's) values and why: ``failures``,
    ``handshake`` (p95 at or above the threshold) and ``retransmits``
    (share at or above it), each only from ``min_connects`` samples on."""
    floor = max(t.min_connects, 1)
    reasons = []
    cls = "normal"
    tried, failed = attempts(values)
    if tried >= floor and failed:
        ratio = failed / tried
        if ratio >= t.warning:
            cls = "danger" if ratio >= t.danger else "warning"
            reasons.append("failures")
    if cls == "danger":
        return cls, reasons
    if float(values.get("handshakes") or 0) >= floor:
        p95 = handshake_quantile(values.get("handshake_hist") or [], 0.95)
        if p95 is not None and p95 >= t.handshake_p95_ms * 1000:
            cls = "warning"
            reasons.append("handshake")
    if float(values.get("retransmits") or 0) >= floor and retransmit_ratio(values) >= t.retransmit_ratio:
        cls = "warning"
        reasons.append("retransmits")
    return cls, reasons


def edge_class(values: Row, t: Thresholds = Thresholds()) -> str:
    """``danger`` / ``warning`` / ``normal`` of one edge's (or row's) values (``assess``)."""
    return assess(values, t)[0]


def pair_names(row: Row) -> tuple[str, str]:
    """The two ends of a row by their finest names: instances where the row has them, else services."""
    return (row.get("s_inst") or row["s_name"], row.get("d_inst") or row["d_name"])


def worst(*classes: str) -> str:
    """The worst health class of ``classes`` (classes that are not health classes count as normal)."""
    return max(classes, key=lambda c: _RANK.get(c, 0), default="normal")


@dataclass
class Health:
    """What ``classify`` found: the class of each drawn edge and node, why
    each unhealthy edge is so (``assess``'s reasons, of its own sum and of
    its rows), and the worst row behind each edge."""

    edges: dict[tuple[str, str], str]
    nodes: dict[str, str]
    worst_rows: dict[tuple[str, str], Row]
    reasons: dict[tuple[str, str], list[str]]


def classify(rows: Iterable[Row], group: Callable[[Row, str], str | None],
             edges: Mapping[tuple[str, str], graph.Edge], t: Thresholds) -> Health:
    """Classes of the drawn ``edges`` (contracted from ``rows`` by ``group``) and of their nodes.

    An edge's class is the worst of its own sum and of its rows; a node's
    the worst of the edges into it, its internal edge included.
    """
    edge_cls: dict[tuple[str, str], str] = {}
    worst_rows: dict[tuple[str, str], Row] = {}
    reasons: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        cls, why = assess(row, t)
        if cls == "normal":
            continue
        key = (group(row, "s"), group(row, "d"))
        if key[0] is None or key[1] is None:
            continue
        reasons[key].update(why)
        if _RANK[cls] > _RANK[edge_cls.get(key, "normal")] or (
                cls == edge_cls.get(key) and attempts(row)[1] > attempts(worst_rows[key])[1]):
            edge_cls[key] = cls
            worst_rows[key] = row
    for key, edge in edges.items():
        own, why = assess(edge.values, t)
        if own == "normal":
            continue
        reasons[key].update(why)
        if _RANK[own] > _RANK[edge_cls.get(key, "normal")]:
            edge_cls[key] = own
    nodes: dict[str, str] = {}
    for (_, dst), cls in edge_cls.items():
        nodes[dst] = worst(nodes.get(dst, "normal"), cls)
    unhealthy = {k: c for k, c in edge_cls.items() if c != "normal"}
    return Health(unhealthy, nodes, worst_rows, {k: sorted(reasons[k]) for k in unhealthy})


# -- the problems list ---------------------------------------------------------------------

def _ratio(tried: float, failed: float) -> float:
    return failed / tried if tried else 0.0


def problems(ctx: ViewContext, p: ViewParams, limit: int = 20, min_connects: int | None = None) -> dict[str, Any]:
    """The worst service pairs and services of the window, for the page's problems list.

    Returns
    -------
    dict
        ``edges``: service pairs classed warning or danger, worst first (by
        class, then failed connects, then ratio), each with both ends'
        names, kinds and areas; ``services``: the servers of those pairs
        and the services with firing alerts, worst first, each with its
        area, the failed and attempted connects into it and its failing
        clients; ``meta``: the view's parameters and the thresholds.
    """
    t = Thresholds.of(ctx)
    if min_connects is not None:
        t = replace(t, min_connects=min_connects)
    rows = ctx.rows(p)
    pairs = graph.contract(rows, lambda r, side: r[f"{side}_name"])
    ends: dict[str, tuple[str, str]] = {}
    for r in rows:
        for side in ("s", "d"):
            ends.setdefault(r[f"{side}_name"], (r[f"{side}_kind"], r[f"{side}_area"]))

    edges = []
    served: dict[str, dict[str, Any]] = defaultdict(lambda: {"connects": 0.0, "failures": 0.0, "clients": []})
    for (src, dst), edge in pairs.items():
        if src == dst and ends[src][0] == "internet":
            continue  # the internet talking to itself through a proxy says nothing about a service
        tried, failed = attempts(edge.values)
        into = served[dst]
        into["connects"] += tried
        into["failures"] += failed
        cls, why = assess(edge.values, t)
        if cls == "normal":
            continue
        into["clients"].append(src)
        edges.append({"source": src, "target": dst, "source_kind": ends[src][0], "source_area": ends[src][1],
                      "target_kind": ends[dst][0], "target_area": ends[dst][1], "class": cls, "reasons": why,
                      "connects": tried, "failures": failed, "failure_ratio": round(_ratio(tried, failed), 6),
                      "fail_rate": round(edge.values["fail_rate"], 6), "open": round(edge.values["open"], 6),
                      "provenance": edge.provenance, **figures(edge.values)})
    edges.sort(key=lambda e: (-_RANK[e["class"]], -e["failures"], -e["failure_ratio"], e["source"], e["target"]))

    alerts = ctx.alerting(p.win.end)
    catalog = ctx.catalog(p.win)
    names = {e["target"] for e in edges} | {s for s, items in alerts.items() if items}
    services = []
    for name in names:
        into = served.get(name, {"connects": 0.0, "failures": 0.0, "clients": []})
        kind, area = ends.get(name) or ("service", catalog["services"].get(name, {}).get("area") or "unassigned")
        cls = edge_class(into, t)
        worst_edge = max((_RANK[e["class"]] for e in edges if e["target"] == name), default=0)
        cls = worst(cls, CLASSES[worst_edge])
        services.append({"name": name, "kind": kind, "area": area, "class": cls,
                         "alerts": len(alerts.get(name, [])), "connects": into["connects"],
                         "failures": into["failures"],
                         "failure_ratio": round(_ratio(into["connects"], into["failures"]), 6),
                         "failing_clients": sorted(into["clients"])})
    # Alerting services rank with the failing ones: an alert is somebody's page.
    services.sort(key=lambda s: (-max(_RANK[s["class"]], 2 if s["alerts"] else 0), -s["failures"],
                                 -s["alerts"], -s["failure_ratio"], s["name"]))
    return {"edges": edges[:limit], "services": services[:limit],
            "counts": {"edges": len(edges), "services": len(services)},
            "meta": p.meta(**t.meta(), limit=limit)}


# -- the pairs behind one drawn edge --------------------------------------------------------

def edge_pairs(ctx: ViewContext, p: ViewParams, source: str, target: str, level: str,
               limit: int = 50) -> dict[str, Any]:
    """The pairs behind the drawn edge ``source -> target`` of a ``level``.

    ``level="areas"``: ``source`` and ``target`` are areas, the pairs are
    the service pairs between them; ``level="area"``: they are services,
    the pairs are the instance pairs between them (``ctx.rows`` split by
    the client's instances).  Largest first by open connections, then new
    connections, then calls.
    """
    t = Thresholds.of(ctx)
    if level == "areas":
        rows = [r for r in ctx.rows(p) if r["s_area"] == source and r["d_area"] == target]
        key = lambda r, side: r[f"{side}_name"]  # noqa: E731
    else:
        # Split by the client's instances; a client without any (INTERNET, an external) by the server's.
        rows = [r for r in ctx.rows(p, instances_of=source) if r["s_name"] == source and r["d_name"] == target]
        if not rows:
            rows = [r for r in ctx.rows(p, instances_of=target) if r["s_name"] == source and r["d_name"] == target]
        key = lambda r, side: r[f"{side}_inst"] or r[f"{side}_name"]  # noqa: E731
    contracted = graph.contract(rows, key)
    out = []
    for (src, dst), edge in contracted.items():
        tried, failed = attempts(edge.values)
        v = edge.values
        cls, why = assess(v, t)
        out.append({"source": src, "target": dst, "class": cls, "reasons": why, "open": round(v["open"], 6),
                    "conn_rate": round(v["conn_rate"], 6), "connects": tried, "failures": failed,
                    "failure_ratio": round(_ratio(tried, failed), 6), "bytes": v["bytes"],
                    "calls": v["calls"], "provenance": edge.provenance, **figures(v)})
    out.sort(key=lambda e: (-e["open"], -e["conn_rate"], -e["calls"], e["source"], e["target"]))
    return {"source": source, "target": target, "level": level, "pairs": out[:limit], "count": len(out),
            "meta": p.meta(**t.meta())}
