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

The SQL is ``api.views.reads``' (``stored_minutes``, ``live_minutes``).
Cost: one or two queries.  Only rows that can belong to the edge are read
(rows of its two ends, and the addresses, which may turn out to be either),
so an area edge of a 500-service fleet is a few thousand rows for the hour.
Calls that only traces saw have no connects and are not part of a series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from api.catalog.lookups import UNASSIGNED, CatalogIndex, catalog_index
from api.resolution.tcp import Window
from api.views import reads
from api.views.context import ViewContext
from api.views.params import ViewParams
from tracer.records import format_ts

__all__ = ["LEVELS", "Edge", "edge_series"]

#: Levels of a drawn edge: between areas, between services (an area's view),
#: between an instance of a service and a peer (a service's view).
LEVELS = ("areas", "area", "service")

STEP = 60

@dataclass(frozen=True)
class Edge:
    """A drawn edge: ``source -> target`` at ``level`` (``service``: the open service of a service's view)."""

    source: str
    target: str
    level: str
    service: str | None = None

    def key(self, row: Mapping[str, str]) -> tuple[str, str]:
        """The drawn edge a row (its ``_KEYS``) belongs to, named as the view names its ends."""
        if self.level == "areas":
            return row["s_area"], row["d_area"]
        if self.level == "area":
            return row["s_name"], row["d_name"]
        # The open service's side is its instance, the other side the peer.
        return (row["s_inst"] if row["s_name"] == self.service else row["s_name"],
                row["d_inst"] if row["d_name"] == self.service else row["d_name"])


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


#: The keys of the rows a level's drawn edges are named by.
_KEYS = {"areas": ["s_area", "d_area"], "area": ["s_name", "d_name"],
         "service": ["s_name", "s_inst", "d_name", "d_inst"]}


def _stored(ctx: ViewContext, win: Window, split: int, edge: Edge, catalog: CatalogIndex, dc: str | None,
            sums: dict[int, list[int]]) -> None:
    """Add the minutes ``[win.start, split)`` from the stage's tables to ``sums``."""
    params: dict[str, Any] = {}
    if edge.level == "service":
        # The open service's rows (graph_rows' filter), and of those the ones with the edge's other end.
        params.update(s_n=edge.source, d_n=edge.target)
        where = tuple(f"({c}_kind = 'addr' OR {c}_name = {{svc:String}} OR {c}_name = {{{c}_n:String}})"
                      for c in ("s", "d"))
    else:
        where = (_side_filter(edge, "s", edge.source, catalog, params),
                 _side_filter(edge, "d", edge.target, catalog, params))
    keys = _KEYS[edge.level]
    want = (edge.source, edge.target)
    for (ts, *key), values in reads.stored_minutes(
            ctx.store, win, split, keys, catalog, instances=edge.level == "service", dc=dc,
            svc=edge.service if edge.level == "service" else None, where=where, params=params).items():
        if edge.key(dict(zip(keys, key))) == want:
            _add(sums, ts, values["open_seconds"], values["connects"], values["failures"])


# -- minutes the stage has not reached ----------------------------------------------------

_LIVE_KEYS: dict[str, Callable[[str], str]] = {
    "areas": lambda side: f"{side}_area",
    "area": lambda side: f"{side}_name",
    "service": lambda side: f"if({side}_name = {{svc:String}}, {side}_inst, {side}_name)",
}


def _live(ctx: ViewContext, win: Window, edge: Edge, dc: str | None, sums: dict[int, list[int]]) -> None:
    """Add the minutes of ``win`` resolved now, the catalog applied in the query, to ``sums``."""
    key = _LIVE_KEYS[edge.level]
    params: dict[str, Any] = {"src": edge.source, "dst": edge.target}
    where = "drawn_s = {src:String} AND drawn_d = {dst:String}"
    if edge.level == "service":
        params["svc"] = edge.service
        where += " AND (s_name = {svc:String} OR d_name = {svc:String})"
    if dc:
        params["dc"] = dc
        where += " AND (s_dc = {dc:String} OR d_dc = {dc:String})"
    for ts, os_, cn, fl in reads.live_minutes(ctx.store, win, {"drawn_s": key("s"), "drawn_d": key("d")},
                                              slack=ctx.listener_slack, where=where, params=params):
        _add(sums, ts, os_, cn, fl)


def _add(sums: dict[int, list[int]], ts: int, os_: int, cn: int, fl: int) -> None:
    have = sums.setdefault(ts, [0, 0, 0])
    have[0] += int(os_)
    have[1] += int(cn)
    have[2] += int(fl)
