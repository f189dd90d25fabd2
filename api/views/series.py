"""One drawn edge minute by minute: its connects, failures and open connections over the hour before T.

The edge panel draws these as a sparkline, so that a failing edge shows
whether it started failing a minute ago or has been failing all along.

How: a drawn edge is named as the view draws it - two areas (``areas``),
two services, externals or INTERNET (``area``), or an instance of the open
service and a peer (``service``).  The minutes of the hour that the
resolution stage has resolved are read from its tables
(``resolved_svc_1m``, ``resolved_1m`` for instance edges), summed by minute
in ClickHouse, with the catalog applied to the rows kept as addresses the
way ``reads.graph_rows`` applies it (so a series and the map agree on what
an address is); the minutes the stage has not reached are resolved on the
spot (``api.resolution.tcp.resolved_sql``, catalog included) and summed by
minute the same way.

Cost: one or two queries.  Only rows that can belong to the edge are read
(rows of its two ends, and the addresses, which may turn out to be either),
so an area edge of a 500-service fleet is a few thousand rows for the hour.
Calls that only traces saw have no connects and are not part of a series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from api.catalog.lookups import UNASSIGNED, CatalogIndex, catalog_index
from api.resolution.tcp import Window, resolved_sql
from api.views.context import ViewContext
from api.views.params import ViewParams
from tracer.records import format_ts

__all__ = ["LEVELS", "Edge", "edge_series"]

#: Levels of a drawn edge: between areas, between services (an area's view),
#: between an instance of a service and a peer (a service's view).
LEVELS = ("areas", "area", "service")

STEP = 60

#: A resolved row with the catalog applied: (s_kind, s_name, s_area, s_inst, d_kind, d_name, d_area, d_inst).
Ends = tuple[str, str, str, str, str, str, str, str]


@dataclass(frozen=True)
class Edge:
    """A drawn edge: ``source -> target`` at ``level`` (``service``: the open service of a service's view)."""

    source: str
    target: str
    level: str
    service: str | None = None

    def key(self, ends: Ends) -> tuple[str, str]:
        """The drawn edge a row belongs to, named as the view names its ends."""
        sk, sn, sa, si, dk, dn, da, di = ends
        if self.level == "areas":
            return sa, da
        if self.level == "area":
            return sn, dn
        # The open service's side is its instance, the other side the peer.
        return (si if sn == self.service else sn), (di if dn == self.service else dn)


def edge_series(ctx: ViewContext, p: ViewParams, edge: Edge, minutes: int = 60) -> dict[str, Any]:
    """The edge's figures per minute over the ``minutes`` before the time shown.

    Parameters
    ----------
    ctx, p : the view's context and parameters; the series ends with the
        minute that holds ``p.win.end`` (the partly written one of a live view).
    edge : Edge
    minutes : int

    Returns
    -------
    dict
        ``points``: one per minute, oldest first, each ``t`` (its start),
        ``connects``, ``failures`` (failed connects) and ``open`` (open
        connections, time-averaged over the part of the minute covered);
        ``totals``: connects and failures summed; ``from``/``to``: the
        series' range; ``at``: the time shown; ``step``: 60.
    """
    end = -(-p.win.end // STEP) * STEP
    win = Window(end - minutes * STEP, end)

    def compute() -> dict[str, Any]:
        state = ctx.state(win)
        catalog = catalog_index(ctx.store, state.catalog_version)
        sums: dict[int, list[int]] = {}
        if state.split > win.start:
            _stored(ctx, win, state.split, edge, catalog, p.dc, sums)
        if state.split < win.end:
            _live(ctx, Window(state.split, win.end), edge, p.dc, sums)
        points = []
        for t in range(win.start, win.end, STEP):
            os_, cn, fl = sums.get(t, (0, 0, 0))
            covered = max(1, min(STEP, p.win.end - t))
            points.append({"t": format_ts(t), "connects": cn, "failures": fl, "open": round(os_ / covered, 6)})
        return {"source": edge.source, "target": edge.target, "level": edge.level, "service": edge.service,
                "step": STEP, "from": format_ts(win.start), "to": format_ts(win.end), "at": format_ts(p.win.end),
                "points": points,
                "totals": {"connects": sum(x["connects"] for x in points),
                           "failures": sum(x["failures"] for x in points)},
                "meta": p.meta(minutes=minutes)}

    return ctx.cached(("series", edge, win, p.win.end, p.dc), compute, p.win.end)


# -- the stage's minutes -----------------------------------------------------------------

def _side_filter(edge: Edge, side: str, name: str, catalog: CatalogIndex, params: dict[str, Any]) -> str:
    """A condition on one end of the stored rows that every row of the edge meets (rows kept as
    addresses always do: the catalog names them only once they are read)."""
    kind, col = f"{side}_kind", f"{side}_name"
    if edge.level != "areas":
        params[f"{side}_n"] = name
        return f"({kind} = 'addr' OR {col} = {{{side}_n:String}})"
    params[f"{side}_names"] = sorted(n for n, a in catalog.area_of.items() if (a or UNASSIGNED) == name)
    cond = f"{kind} = 'addr' OR has({{{side}_names:Array(String)}}, {col})"
    if name == UNASSIGNED:
        # Services the catalog does not list are unassigned too.
        params["known"] = sorted(catalog.area_of)
        cond += f" OR NOT has({{known:Array(String)}}, {col})"
    return f"({cond})"


def _stored(ctx: ViewContext, win: Window, split: int, edge: Edge, catalog: CatalogIndex, dc: str | None,
            sums: dict[int, list[int]]) -> None:
    """Add the minutes ``[win.start, split)`` from the stage's tables to ``sums``."""
    db = ctx.store.db
    inst = edge.level == "service"
    table = "resolved_1m" if inst else "resolved_svc_1m"
    s_addr, d_addr = ("s_inst", "d_inst") if inst else ("s_addr", "d_addr")
    params: dict[str, Any] = {"t0": win.start, "t1": split, "bounds": catalog.bounds}
    where = ["ts >= toDateTime({t0:UInt32}, 'UTC')", "ts < toDateTime({t1:UInt32}, 'UTC')"]
    if inst:
        params["svc"] = edge.service
        where.append("(s_name = {svc:String} OR d_name = {svc:String} OR s_kind = 'addr' OR d_kind = 'addr')")
        s_side, d_side = (f"({c}_kind = 'addr' OR {c}_name = {{svc:String}} OR {c}_name = {{{c}_n:String}})"
                          for c in ("s", "d"))
        params.update(s_n=edge.source, d_n=edge.target)
    else:
        s_side = _side_filter(edge, "s", edge.source, catalog, params)
        d_side = _side_filter(edge, "d", edge.target, catalog, params)
    where += [s_side, d_side]
    if dc:
        where.append("(s_dc = {dc:String} OR d_dc = {dc:String})")
        params["dc"] = dc
    if catalog.sources:
        # The traced clients' connections seen again at the server through its
        # virtual address: left out as graph_rows leaves them out.
        where.append(f"NOT (s_kind = 'addr' AND d_kind = 'service' AND arrayExists("
                     f"r -> toIPv6OrDefault({s_addr}) BETWEEN r.1 AND r.2 AND r.3 = d_name, "
                     "arrayMap(x -> (toIPv6(x.1), toIPv6(x.2), x.3), {vsources:Array(Tuple(String, String, String))})))")
        params["vsources"] = catalog.source_bounds
    ranged = "arrayExists(r -> toIPv6OrDefault({a}) BETWEEN r.1 AND r.2, bounds)"
    # Addresses in no catalog range are all INTERNET: summed as the empty address.
    rows = ctx.store.query(
        f"""WITH arrayMap(x -> (toIPv6(x.1), toIPv6(x.2)), {{bounds:Array(Tuple(String, String))}}) AS bounds
        SELECT toUInt32(ts), toString(s_kind), s_name, sa, toString(d_kind), d_name, da, dp,
               sum(open_seconds), sum(connects), sum(failures)
        FROM (
          SELECT ts, s_kind, s_name, d_kind, d_name, n, open_seconds, connects, failures,
                 if(s_kind = 'addr' AND NOT {ranged.format(a=s_addr)}, '', {s_addr}) AS sa,
                 d_kind = 'addr' AND NOT {ranged.format(a=d_addr)} AS d_far,
                 if(d_far, '', {d_addr}) AS da, if(d_far, 0, d_port) AS dp
          FROM {db}.{table} WHERE {' AND '.join(where)})
        GROUP BY ts, s_kind, s_name, sa, d_kind, d_name, da, dp HAVING sum(n) > 0""",
        params)
    named: dict[tuple[str, str, int | None], tuple[str, str, str]] = {}

    def end(kind: str, name: str, addr: str, port: int | None) -> tuple[str, str, str]:
        if kind == "service":
            return "service", name, catalog.area(name)
        got = named.get((kind, addr, port))
        if got is None:
            got = named[(kind, addr, port)] = catalog.address(addr, port)
        return got

    want = (edge.source, edge.target)
    for ts, sk, sn, sa, dk, dn, da, dp, os_, cn, fl in rows:
        s = end(sk, sn, sa, None)
        d = end(dk, dn, da, dp)
        if edge.key((*s, sa, *d, da)) == want:
            _add(sums, int(ts), os_, cn, fl)


# -- minutes the stage has not reached ----------------------------------------------------

_LIVE_KEYS: dict[str, Callable[[str], str]] = {
    "areas": lambda side: f"{side}_area",
    "area": lambda side: f"{side}_name",
    "service": lambda side: f"if({side}_name = {{svc:String}}, {side}_inst, {side}_name)",
}


def _live(ctx: ViewContext, win: Window, edge: Edge, dc: str | None, sums: dict[int, list[int]]) -> None:
    """Add the minutes of ``win`` resolved now, the catalog applied in the query, to ``sums``."""
    key = _LIVE_KEYS[edge.level]
    params: dict[str, Any] = {"t0": win.start, "t1": win.end, "slack": ctx.listener_slack,
                              "src": edge.source, "dst": edge.target}
    where = f"{key('s')} = {{src:String}} AND {key('d')} = {{dst:String}}"
    if edge.level == "service":
        params["svc"] = edge.service
        where += " AND (s_name = {svc:String} OR d_name = {svc:String})"
    if dc:
        params["dc"] = dc
        where += " AND (s_dc = {dc:String} OR d_dc = {dc:String})"
    for ts, os_, cn, fl in ctx.store.query(
            f"SELECT toUInt32(ts), sum(os), sum(cn), sum(fl) FROM ({resolved_sql(ctx.store.db, win)}) "
            f"WHERE {where} GROUP BY ts", params):
        _add(sums, int(ts), os_, cn, fl)


def _add(sums: dict[int, list[int]], ts: int, os_: int, cn: int, fl: int) -> None:
    have = sums.setdefault(ts, [0, 0, 0])
    have[0] += int(os_)
    have[1] += int(cn)
    have[2] += int(fl)
