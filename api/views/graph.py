"""The graph model: service-level edges in, graphs, impact, cycles and diffs out.

Input is the list of resolved rows of ``api.views.reads.graph_rows`` - one per
(client, server) pair with per-second values.  Nothing here touches the
store or knows about Vizceral (``api/views/vizceral.py`` serialises).

Contraction (services to areas, to datacenters, instances to services) is
plain dict aggregation: ``networkx.quotient_graph`` is ~27x slower for the
same result.  networkx is used where it earns its keep - ancestors and
descendants for impact, cycles, shortest paths.

Edges point from client to server: ``a -> b`` means *a depends on b*.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import networkx as nx

from tracer.records import add_handshake_hists

__all__ = [
    "METRICS",
    "VALUE_KEYS",
    "Edge",
    "provenance",
    "metric_value",
    "contract",
    "service_graph",
    "impact",
    "cycles",
    "diff",
    "long_tail",
    "node_volumes",
]

#: metric name of the API -> value key of the rows.
METRICS: dict[str, str] = {"open": "open", "connects": "conn_rate", "failures": "fail_rate"}
#: Values summed when edges are contracted: what TCP saw, its health, then
#: what traces saw. Beside them ``handshake_hist``, the handshake latency
#: histogram (``tracer.records.handshake_bounds``), is added bucket by bucket.
VALUE_KEYS = ("open", "conn_rate", "fail_rate", "connects", "failures", "bytes",
              "handshakes", "handshake_us", "retransmits", "aborts",
              "calls", "call_rate", "call_errors", "call_us")


def _no_values() -> dict[str, Any]:
    return {**{k: 0.0 for k in VALUE_KEYS}, "handshake_hist": []}


@dataclass
class Edge:
    """Aggregated values of one edge after contraction."""

    source: str
    target: str
    values: dict[str, Any] = field(default_factory=_no_values)

    def add(self, row: Mapping[str, Any]) -> None:
        values = self.values
        for key in VALUE_KEYS:
            value = row.get(key)
            if value:
                values[key] += float(value)
        hist = row.get("handshake_hist")
        if hist:
            values["handshake_hist"] = add_handshake_hists(values["handshake_hist"], hist)

    def volume(self, metric: str) -> float:
        return self.values[METRICS[metric]]

    @property
    def failure_ratio(self) -> float:
        connects = self.values["connects"]
        return self.values["failures"] / connects if connects else 0.0

    @property
    def provenance(self) -> str:
        """Who saw the edge: ``tcp``, ``trace`` or ``both``."""
        return provenance(self.values)


def provenance(values: Mapping[str, Any]) -> str:
    """``tcp``, ``trace`` or ``both``: which sources saw an edge's values."""
    tcp = bool(values.get("connects") or values.get("open") or values.get("bytes"))
    trace = bool(values.get("calls"))
    return "both" if tcp and trace else "trace" if trace else "tcp"


def metric_value(row: Mapping[str, Any], metric: str) -> float:
    """The value of ``metric`` (``open`` | ``connects`` | ``failures``) in a row."""
    return float(row.get(METRICS[metric]) or 0)


def contract(rows: Iterable[Mapping[str, Any]],
             key: Callable[[Mapping[str, Any], str], str | None]) -> dict[tuple[str, str], Edge]:
    """Aggregate rows into edges between groups.

    Parameters
    ----------
    rows : iterable of mapping
        Resolved rows (``api.views.reads.graph_rows``).
    key : callable
        ``key(row, side)`` with side ``"s"`` (client) or ``"d"`` (server)
        returns the group of that end, or None to drop the row.

    Returns
    -------
    dict
        ``(source group, target group) -> Edge``; self-edges are kept (the
        views decide whether to draw them).

    Examples
    --------
    >>> rows = [{"s_area": "a", "d_area": "b", "open": 2.0},
    ...         {"s_area": "a", "d_area": "b", "open": 1.0}]
    >>> e = contract(rows, lambda r, side: r[side + "_area"])
    >>> e[("a", "b")].values["open"]
    3.0
    """
    out: dict[tuple[str, str], Edge] = {}
    for row in rows:
        src, dst = key(row, "s"), key(row, "d")
        if src is None or dst is None:
            continue
        edge = out.get((src, dst))
        if edge is None:
            edge = out[(src, dst)] = Edge(src, dst)
        edge.add(row)
    return out


def _by_name(row: Mapping[str, Any], side: str) -> str:
    return row[f"{side}_name"]


def service_graph(rows: Iterable[Mapping[str, Any]], metric: str = "open") -> nx.DiGraph:
    """The service graph: nodes are services, externals and INTERNET.

    Node attributes ``kind`` and ``area``; edge attributes ``weight`` (the
    metric), every value of ``VALUE_KEYS``.  Self-loops (a service calling
    itself) are left out: they say nothing about dependencies.
    """
    rows = list(rows)
    graph = nx.DiGraph()
    for row in rows:
        for side in ("s", "d"):
            graph.add_node(row[f"{side}_name"], kind=row[f"{side}_kind"], area=row[f"{side}_area"])
    for (src, dst), edge in contract(rows, _by_name).items():
        if src != dst:
            graph.add_edge(src, dst, weight=edge.volume(metric), **edge.values)
    return graph


def _depth(graph: nx.DiGraph, source: str, reverse: bool) -> dict[str, int]:
    view = graph.reverse(copy=False) if reverse else graph
    return nx.single_source_shortest_path_length(view, source)


def impact(graph: nx.DiGraph, service: str,
           processes: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """Who is hit when ``service`` fails, and what it needs to work.

    Parameters
    ----------
    graph : networkx.DiGraph
        ``service_graph`` at the time of interest.
    service : str
        A node of ``graph``.  A service with no traffic in the window is
        not an error: the result is simply empty.
    processes : mapping, optional
        Business process name -> the services it relies on (catalog areas
        of kind ``process``).

    Returns
    -------
    dict
        ``upstream``: services that depend on ``service`` directly or
        transitively (networkx ancestors), each with ``hops`` and ``weight``
        - the traffic it sends towards ``service`` (its edges into
        ``service`` or into other upstream services); ``downstream``: what
        ``service`` depends on (descendants) with ``hops`` and ``weight``
        (traffic reaching it from ``service`` or other downstream nodes);
        ``areas``: business areas of the upstream services with their
        summed weight and count; ``processes``: business processes relying
        on ``service`` or on an upstream service, with the services that tie
        them to it; ``cycles``: dependency cycles through ``service``.
    """
    if service not in graph:
        return {"service": service, "upstream": [], "downstream": [], "areas": [], "processes": [],
                "cycles": []}
    # INTERNET and externals stand for many unrelated parties: a path may
    # start or end there but never pass through (clients of the INTERNET
    # node are not callers of what the INTERNET node calls).  Their server
    # side becomes a separate sink node for the search.
    graph = _outside_split(graph)
    # For INTERNET or an external, callers reach its sink side.
    called = ("sink", service) if ("sink", service) in graph else service
    up = nx.ancestors(graph, called)
    down = nx.descendants(graph, service)
    up_hops = _depth(graph, called, reverse=True)
    down_hops = _depth(graph, service, reverse=False)
    towards = up | {called}

    def entry(node: Any, hops: int, weight: float) -> dict[str, Any]:
        data = graph.nodes[node]
        return {"name": node[1] if isinstance(node, tuple) else node, "kind": data.get("kind", "service"), "area": data.get("area", ""),
                "hops": hops, "weight": weight}

    upstream = [
        entry(n, up_hops[n], sum(graph.edges[n, m]["weight"] for m in graph.successors(n) if m in towards))
        for n in up
    ]
    reached = down | {service}
    downstream = [
        entry(n, down_hops[n], sum(graph.edges[m, n]["weight"] for m in graph.predecessors(n) if m in reached))
        for n in down
    ]
    order = lambda e: (e["hops"], -e["weight"], e["name"])  # noqa: E731
    upstream.sort(key=order)
    downstream.sort(key=order)

    areas: dict[str, dict[str, Any]] = {}
    for e in upstream:
        if e["kind"] != "service":
            continue  # INTERNET and externals stand outside: their "area" is no business area
        a = areas.setdefault(e["area"], {"name": e["area"], "services": 0, "weight": 0.0})
        a["services"] += 1
        a["weight"] += e["weight"]
    affected = []
    hit = towards
    for name, members in sorted((processes or {}).items()):
        via = sorted(set(members) & hit)
        if via:
            weight = sum(e["weight"] for e in upstream if e["name"] in via)
            affected.append({"name": name, "via": via, "weight": weight})
    return {
        "service": service,
        "upstream": upstream,
        "downstream": downstream,
        "areas": sorted(areas.values(), key=lambda a: (-a["weight"], a["name"])),
        "processes": sorted(affected, key=lambda p: (-p["weight"], p["name"])),
        "cycles": cycles(graph, through=service),
    }


def _outside_split(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy where edges into INTERNET/external nodes go to ``("sink", name)`` instead."""
    outside = {n for n, d in graph.nodes(data=True) if d.get("kind") in ("internet", "external")}
    if not outside:
        return graph
    split = nx.DiGraph()
    split.add_nodes_from(graph.nodes(data=True))
    for n in outside:
        split.add_node(("sink", n), **graph.nodes[n])
    for u, v, data in graph.edges(data=True):
        split.add_edge(u, ("sink", v) if v in outside else v, **data)
    return split


def cycles(graph: nx.DiGraph, through: str | None = None, limit: int = 20,
           length_bound: int = 6) -> list[list[str]]:
    """Dependency cycles (each a list of nodes, first node repeated implicitly).

    Bounded because a dense strongly connected component has exponentially
    many cycles: at most ``limit`` cycles of at most ``length_bound`` nodes,
    searched only inside the strongly connected component of ``through``
    when it is given.
    """
    if through is not None:
        if through not in graph:
            return []
        component = next(c for c in nx.strongly_connected_components(graph) if through in c)
        if len(component) < 2:
            return []
        sub = graph.subgraph(component)
    else:
        sub = graph
    found: list[list[str]] = []
    for cycle in nx.simple_cycles(sub, length_bound=length_bound):
        if len(cycle) < 2 or (through is not None and through not in cycle):
            continue
        if through is not None:
            i = cycle.index(through)
            cycle = cycle[i:] + cycle[:i]
        found.append(cycle)
        if len(found) >= limit:
            break
    return sorted(found, key=lambda c: (len(c), c))


def diff(before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]], metric: str,
         min_change: float = 0.5, min_volume: float = 0.01) -> dict[str, list[dict[str, Any]]]:
    """New, vanished and changed service edges between two graphs.

    Parameters
    ----------
    before, after : iterable of mapping
        Resolved rows at the two times.
    metric : str
        Which value to compare (``open``, ``connects``, ``failures``).
    min_change : float
        Relative change (``|after - before| / before``) from which an edge
        that exists at both times counts as changed.
    min_volume : float
        Edges below this volume at both times are noise: they are neither
        new, vanished nor changed.

    Returns
    -------
    dict
        ``new``, ``vanished`` and ``changed`` lists of ``{source, target,
        before, after, change}``, largest first.
    """
    old = contract(before, _by_name)
    new = contract(after, _by_name)
    out: dict[str, list[dict[str, Any]]] = {"new": [], "vanished": [], "changed": []}
    for key in set(old) | set(new):
        a = old[key].volume(metric) if key in old else 0.0
        b = new[key].volume(metric) if key in new else 0.0
        if max(a, b) < min_volume:
            continue
        item = {"source": key[0], "target": key[1], "before": a, "after": b,
                "change": None if a == 0 else (b - a) / a}
        if key not in old or a == 0:
            out["new"].append(item)
        elif key not in new or b == 0:
            out["vanished"].append(item)
        elif abs(b - a) / a >= min_change:
            out["changed"].append(item)
    out["new"].sort(key=lambda i: (-i["after"], i["source"], i["target"]))
    out["vanished"].sort(key=lambda i: (-i["before"], i["source"], i["target"]))
    out["changed"].sort(key=lambda i: (-abs(i["after"] - i["before"]), i["source"], i["target"]))
    return out


def long_tail(volumes: Mapping[str, float], max_nodes: int,
              keep: Iterable[str] = ()) -> tuple[set[str], list[str]]:
    """Split nodes into the ones drawn and the long tail grouped into one node.

    Parameters
    ----------
    volumes : mapping
        Node -> its traffic (in + out); the largest are kept.
    max_nodes : int
        At most this many nodes are drawn, the "N more" node included.
    keep : iterable
        Nodes drawn whatever their volume (the focus of the view, INTERNET),
        as long as they fit.

    Returns
    -------
    (set, list)
        The nodes kept, and the grouped ones (sorted; empty when all fit).
    """
    if len(volumes) <= max_nodes:
        return set(volumes), []
    pinned = [n for n in keep if n in volumes][: max_nodes - 1]
    rest = sorted((n for n in volumes if n not in pinned), key=lambda n: (-volumes[n], n))
    kept = set(pinned) | set(rest[: max_nodes - 1 - len(pinned)])
    return kept, sorted(n for n in volumes if n not in kept)


def node_volumes(edges: Mapping[tuple[str, str], Edge], metric: str) -> dict[str, float]:
    """Traffic per node (in + out) of contracted edges."""
    vol: dict[str, float] = defaultdict(float)
    for (src, dst), edge in edges.items():
        # ties broken by activity, then by calls (an edge only traces saw)
        v = edge.volume(metric) + edge.values["conn_rate"] * 1e-9 + edge.values["call_rate"] * 1e-12
        vol[src] += v
        vol[dst] += v
    return dict(vol)

