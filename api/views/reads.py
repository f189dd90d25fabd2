"""Every SQL statement the views run, and nothing else.

Views never write SQL: they call the functions here, which return plain
rows (dicts of JSON-ready values).  The heavy lifting - turning endpoint
records into service-level edges at a time T - happens in ClickHouse, so
Python only ever sees one row per (client, server) pair of a view, never
the raw records.

Resolved rows at T with window W (``graph_rows``)
-------------------------------------------------
The resolution stage (``api.resolution.stage``) resolves endpoint rows into
client -> server rows once per minute; ``graph_rows`` reads its tables and
resolves on the spot (``api.resolution.tcp``) only the minutes the stage has
not reached.  The catalog is applied to the rows kept as addresses when
they are read (``api.catalog.lookups``), so a catalog change shows at once -
its virtual addresses too, and the untraced-client rows their ``sources``
explain are left out then.

The value columns are per-second over the window: ``open`` (time-averaged
open connections, from ``open_seconds``), ``conn_rate`` (new connections per
second) and ``fail_rate`` (failed connects per second), plus raw counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from api.catalog.lookups import INTERNET, CatalogIndex, catalog_index, version_sql
from api.resolution.tcp import Window, ip_text, resolved_sql
from api.resolution.traces import link_calls, spans_of_traces
from api.storage import Store
from tracer.records import add_handshake_hists

__all__ = [
    "graph_rows",
    "stored_minutes",
    "live_minutes",
    "resolved_until",
    "window_state",
    "WindowState",
    "service_exists",
    "firing_alerts",
    "service_instances",
    "service_seen",
    "search",
    "timeline",
    "data_range",
    "ping",
]

def _stored_rows(store: Store, table: str, win: Window, end: int, keys: list[str], catalog: CatalogIndex, *,
                 dc: str | None, svc: str | None, where_more: tuple[str, ...] = (),
                 params_more: dict[str, Any] | None = None, by_minute: bool = False) -> dict[tuple, list[int]]:
    """Sums of a resolved table over ``[win.start, end)`` by the view's ``keys``,
    with the catalog applied here to the rows kept as addresses (one lookup
    per distinct address, in Python: cheaper than per row in SQL).

    ClickHouse groups by no more than the keys need (datacenters only when
    ``keys`` hold them) and sums the addresses no catalog range holds into
    one, so a 500-service fleet's five minutes come back as some six
    hundred rows, not the two thousand of every client address apart.

    ``where_more`` (with ``params_more``) narrows the rows read; with
    ``by_minute`` each key starts with its minute (epoch seconds)."""
    db = store.db
    inst = table == "resolved_1m"
    s_addr, d_addr = ("s_inst", "d_inst") if inst else ("s_addr", "d_addr")
    dcs = "s_dc" in keys
    has_dc = "_pairs_" not in table
    by_dc = keys == ["s_dc", "d_dc"] and svc is None and not by_minute
    where = ["ts >= toDateTime({t0:UInt32}, 'UTC')", "ts < toDateTime({t1:UInt32}, 'UTC')"]
    params: dict[str, Any] = {"t0": win.start, "t1": end, **(params_more or {})}
    where += where_more
    if dc:
        where.append("(s_dc = {dc:String} OR d_dc = {dc:String})")
        params["dc"] = dc
    if catalog.sources:
        # A client address the catalog names as a source of the server's own
        # virtual address is the traced clients' connections seen again at
        # the server: left out here rather than when the minute was resolved,
        # so that a change of the catalog shows at once.
        where.append(f"NOT (s_kind = 'addr' AND d_kind = 'service' AND arrayExists("
                     f"r -> toIPv6OrDefault({s_addr}) BETWEEN r.1 AND r.2 AND r.3 = d_name, "
                     "arrayMap(x -> (toIPv6(x.1), toIPv6(x.2), x.3), {vsources:Array(Tuple(String, String, String))})))")
        params["vsources"] = catalog.source_bounds
    if svc is not None:
        # Address rows may turn out to be the service, by its catalog ranges
        # (most services have none: then only rows that name it are read).
        may_be_address = " OR s_kind = 'addr' OR d_kind = 'addr'" if svc in catalog.ranged else ""
        where.append(f"(s_name = {{svc:String}} OR d_name = {{svc:String}}{may_be_address})")
        params["svc"] = svc
    if by_dc:
        # Which datacenter an end is in needs no catalog.
        return {(sdc, ddc): list(sums) for sdc, ddc, *sums in store.query(
            f"SELECT s_dc, d_dc, {_STORED_SUMS} FROM {db}.{table} "
            f"WHERE {' AND '.join(where)} GROUP BY s_dc, d_dc HAVING sum(n) > 0", params)}
    s_dc, d_dc = ("s_dc", "d_dc") if dcs else ("''", "''")
    # Addresses in no catalog range are all INTERNET: summed in the query
    # (as the empty address) rather than returned one row per address.
    params["bounds"] = catalog.bounds
    ranged = "arrayExists(r -> toIPv6OrDefault({a}) BETWEEN r.1 AND r.2, bounds)"
    minute = "toUInt32(ts), " if by_minute else ""
    rows = store.query(
        f"""WITH arrayMap(x -> (toIPv6(x.1), toIPv6(x.2)), {{bounds:Array(Tuple(String, String))}}) AS bounds
        SELECT {minute}toString(s_kind), s_name, {s_dc}, sa, toString(d_kind), d_name, {d_dc}, da, dp, {_STORED_SUMS}
        FROM (
          SELECT ts, s_kind, s_name, {"s_dc, d_dc, " if has_dc else ""}d_kind, d_name, n, open_seconds,
                 connects, failures, bytes,
                 handshakes, handshake_us_sum, retransmits, aborts, handshake_hist,
                 if(s_kind = 'addr' AND NOT {ranged.format(a=s_addr)}, '', {s_addr}) AS sa,
                 d_kind = 'addr' AND NOT {ranged.format(a=d_addr)} AS d_far,
                 if(d_far, '', {d_addr}) AS da, if(d_far, 0, d_port) AS dp
          FROM {db}.{table} WHERE {' AND '.join(where)})
        GROUP BY {minute}s_kind, s_name, {s_dc}, sa, d_kind, d_name, {d_dc}, da, dp HAVING sum(n) > 0""",
        params)
    sources: dict[str, tuple[str, str, str]] = {}
    servers: dict[tuple[str, int], tuple[str, str, str]] = {}
    areas: dict[str, str] = {}
    out: dict[tuple, list[int]] = {}
    # Where each key sits in (s_kind, s_name, s_area, s_dc, d_kind, d_name, d_area, d_dc, s_inst, d_inst).
    picks = [_ROW_KEYS.index(k) for k in keys]
    for row in rows:
        sk, sn, sdc, sa, dk, dn, ddc, da, port, *values = row[1:] if by_minute else row
        if sk == "service":
            s_area = areas.get(sn)
            if s_area is None:
                s_area = areas[sn] = catalog.area(sn)
            s = ("service", sn, s_area)
        else:
            s = sources.get(sa)
            if s is None:
                s = sources[sa] = catalog.address(sa, None)
        if dk == "service":
            d_area = areas.get(dn)
            if d_area is None:
                d_area = areas[dn] = catalog.area(dn)
            d = ("service", dn, d_area)
        else:
            d = servers.get((da, port))
            if d is None:
                d = servers[(da, port)] = catalog.address(da, port)
        if svc is not None and svc != s[1] and svc != d[1]:
            continue
        full = (*s, sdc, *d, ddc, sa, da)
        key = tuple(full[i] for i in picks)
        if by_minute:
            key = (int(row[0]), *key)
        sums = out.get(key)
        if sums is None:
            out[key] = values
        else:
            for i in range(len(_STORED_NAMES) - 1):
                sums[i] += values[i]
            sums[-1] = add_handshake_hists(sums[-1], values[-1])
    return out


#: What ``_stored_rows`` sums per key, in order (the histogram last), and the SQL that does it.
_STORED_NAMES = ("open_seconds", "connects", "failures", "bytes",
                 "handshakes", "handshake_us", "retransmits", "aborts", "handshake_hist")
_STORED_SUMS = ("sum(open_seconds), sum(connects), sum(failures), sum(bytes), sum(handshakes), "
                "sum(handshake_us_sum), sum(retransmits), sum(aborts), sumForEachMerge(handshake_hist)")


_ROW_KEYS = ("s_kind", "s_name", "s_area", "s_dc", "d_kind", "d_name", "d_area", "d_dc", "s_inst", "d_inst")


# The value columns every graph query returns, per second of the window.
_VALUES = """
      sum(os) / {secs:Float64} AS open,
      sum(cn) / {secs:Float64} AS conn_rate,
      sum(fl) / {secs:Float64} AS fail_rate,
      sum(cn) AS connects, sum(fl) AS failures, sum(bt) AS bytes,
      sum(hs) AS handshakes, sum(hu) AS handshake_us, sumForEach(hh) AS handshake_hist,
      sum(rt) AS retransmits, sum(ab) AS aborts"""


def _service_table(bucket: int, datacenters: bool) -> str:
    """The stage's service-level table for a window of ``bucket`` seconds: with each end's
    datacenter (``datacenters``: the datacenter view, a ``dc`` filter) or without, which holds
    a pair of services once rather than once per pair of their datacenters."""
    return f"resolved_{'svc' if datacenters else 'pairs'}_{'1h' if bucket == 3600 else '1m'}"


def _params(win: Window, slack: int, **extra: Any) -> dict[str, Any]:
    return {"t0": win.start, "t1": win.end, "secs": float(win.seconds), "slack": int(slack), **extra}


def stored_minutes(store: Store, win: Window, end: int, keys: list[str], catalog: CatalogIndex, *,
                   instances: bool, dc: str | None, svc: str | None, where: tuple[str, ...] = (),
                   params: dict[str, Any] | None = None) -> dict[tuple, dict[str, Any]]:
    """The stage's rows of ``[win.start, end)`` by minute and ``keys``, the
    catalog applied as ``graph_rows`` applies it (``instances``: from the
    instance-level table): ``(minute, *key) -> {open_seconds, connects, ...}``."""
    table = "resolved_1m" if instances else _service_table(60, bool(dc) or "s_dc" in keys)
    return {key: dict(zip(_STORED_NAMES, sums)) for key, sums in _stored_rows(
        store, table, win, end, keys, catalog, dc=dc, svc=svc, where_more=where, params_more=params,
        by_minute=True).items()}


def live_minutes(store: Store, win: Window, keys: dict[str, str], *, slack: int,
                 where: str, params: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """``(minute, open_seconds, connects, failures)`` of the rows of ``win``
    resolved now (catalog included) that meet ``where``: an SQL condition on
    the resolved columns and on ``keys`` (name -> SQL expression over them)."""
    named = ", ".join(f"{sql} AS {name}" for name, sql in keys.items())
    return [(int(ts), int(os_), int(cn), int(fl)) for ts, os_, cn, fl in store.query(
        f"SELECT toUInt32(ts), sum(os), sum(cn), sum(fl) FROM (SELECT *, {named} FROM ({resolved_sql(store.db, win)})) "
        f"WHERE {where} GROUP BY ts", {**_params(win, slack), **params})]


def resolved_until(store: Store, win: Window) -> int:
    """Where the resolution stage's rows for ``win`` end: the first minute of
    the window with records that the stage has not resolved yet (``win.end``
    when there is none), rounded down to the window's bucket."""
    return window_state(store, win).split


@dataclass(frozen=True)
class WindowState:
    """What a view needs to know before it reads a window, from one query."""

    split: int          # TCP rows are the stage's before this, resolved on the spot after
    calls_split: int    # the same for calls linked from spans
    has_calls: bool     # the stage linked spans in the window, or spans wait in it
    catalog_version: int

    @classmethod
    def resolved(cls, win: Window, catalog_version: int, has_calls: bool = True) -> "WindowState":
        """The state of a window the stage has resolved and linked to its end, in this catalog version."""
        return cls(win.end, win.end, has_calls, catalog_version)

    def reads_as(self, other: "WindowState") -> bool:
        """Whether rows read with ``other`` are the rows of this state: the same splits and catalog,
        and calls looked for if this state has any (looking for none finds none)."""
        return (self.split, self.calls_split, self.catalog_version) == \
            (other.split, other.calls_split, other.catalog_version) and (other.has_calls or not self.has_calls)


def window_state(store: Store, win: Window) -> WindowState:
    """What the stage has resolved and linked of ``win``, and the catalog version, in one query.

    ``minute_book`` says per minute whether it holds records (or spans)
    and whether the stage has resolved (or linked) it: a minute marked and
    not done is where the stage's rows end (``sql/010_minute_book.sql``)."""
    db = store.db
    tcp, calls, linked, version = store.query(
        f"""SELECT toUInt32(minIf(ts, kind = 'tcp' AND marked AND NOT done)),
                   toUInt32(minIf(ts, kind = 'calls' AND marked AND NOT done)),
                   countIf(kind = 'calls' AND done), (SELECT toUInt64(max(version)) FROM {db}.catalog_loads)
            FROM (SELECT kind, ts, max(marked) AS marked, max(done) AS done FROM {db}.minute_book
                  WHERE ts >= toDateTime({{t0:UInt32}}, 'UTC') AND ts < toDateTime({{t1:UInt32}}, 'UTC')
                  GROUP BY kind, ts)""",
        {"t0": win.start, "t1": win.end})[0]

    def split(first: int) -> int:
        return win.end if not first else max(win.start, int(first) // win.bucket * win.bucket)

    # Calls are looked for where the stage linked spans or spans wait for it
    # (a linked minute without calls only costs a query that finds none).
    return WindowState(split(tcp), split(calls), bool(linked) or bool(calls), int(version or 0))


def graph_rows(
    store: Store,
    win: Window,
    *,
    dc: str | None = None,
    instances_of: str | None = None,
    touching: str | None = None,
    slack: int = 600,
    resolved: bool = True,
    calls: bool = True,
    datacenters: bool = False,
    state: WindowState | None = None,
) -> list[dict[str, Any]]:
    """Resolved edges of the window, one row per (client, server) pair.

    The window's minutes that the resolution stage has resolved are read
    from its tables (``sql/003_resolved.sql``); the ones it has not reached
    yet - the last minute or two of a live view, or a store still being
    back-filled - are resolved now, the same way.

    Parameters
    ----------
    store : Store
    win : Window
    dc : str, optional
        Keep only edges with an end in this datacenter.
    instances_of : str, optional
        Keep only edges of this service, split by its instances (``s_inst`` /
        ``d_inst`` hold the instance on this service's side and the peer
        instance or address on the other; empty for the addresses that are
        ``INTERNET``, summed as one).
    touching : str, optional
        Keep only edges with this node (service, external, INTERNET) at one end.
    slack : int
        Seconds a listener is still believed after its last report.
    resolved : bool
        False resolves the whole window now, ignoring the stage's tables.
    calls : bool
        Add the calls traces saw (Zipkin spans); with ``instances_of`` as
        rows of their own with no instance (``*_inst`` empty). Left out with
        ``dc`` and ``datacenters``: a span does not say where it ran.
    datacenters : bool
        One row per pair of datacenters (keys ``s_dc d_dc`` only, ``""`` for
        an end in none: an address or a traced call), read without the catalog.
    state : WindowState, optional
        ``window_state(store, win)`` when the caller has already read it.

    Returns
    -------
    list of dict
        Keys ``s_kind s_name s_area d_kind d_name d_area`` (``s_dc d_dc``
        instead with ``datacenters``; plus ``s_inst d_inst`` with
        ``instances_of``), what TCP saw: ``open
        conn_rate fail_rate`` (per second) and ``connects failures bytes``
        (sums), and what traces saw: ``call_rate`` (per second), ``calls
        call_errors call_us`` (sums; ``call_us`` the calls' summed duration).
        ``*_kind`` is ``service``, ``external`` or ``internet``.
    """
    keys = ["s_dc", "d_dc"] if datacenters else ["s_kind", "s_name", "s_area", "d_kind", "d_name", "d_area"]
    where = []
    extra: dict[str, Any] = {}
    if dc:
        where.append("(s_dc = {dc:String} OR d_dc = {dc:String})")
        extra["dc"] = dc
    if instances_of is not None:
        keys += ["s_inst", "d_inst"]
        where.append("(s_name = {svc:String} OR d_name = {svc:String})")
        extra["svc"] = instances_of
    elif touching is not None:
        where.append("(s_name = {svc:String} OR d_name = {svc:String})")
        extra["svc"] = touching
    filters = f"WHERE {' AND '.join(where)} " if where else ""
    state = state or window_state(store, win)
    split, calls_split = (state.split, state.calls_split) if resolved else (win.start, win.start)
    catalog = catalog_index(store, state.catalog_version)
    svc = instances_of if instances_of is not None else touching
    merged: dict[tuple, dict[str, Any]] = {}
    if split > win.start:
        table = ("resolved_1m" if instances_of is not None
                 else _service_table(win.bucket, bool(dc) or datacenters))
        secs = float(win.seconds)
        for key, sums in _stored_rows(store, table, win, split, keys, catalog, dc=dc, svc=svc).items():
            row = dict(zip(keys, key))
            row.update(zip(_STORED_NAMES, sums))
            os_, cn, fl = row.pop("open_seconds"), row["connects"], row["failures"]
            row.update(open=os_ / secs, conn_rate=cn / secs, fail_rate=fl / secs, **_NO_CALLS)
            merged[key] = row
    if split < win.end:
        live = Window(split, win.end)
        for row in store.query_dicts(
                f"SELECT {', '.join(keys)}, {_VALUES} FROM ({resolved_sql(store.db, live)}) {filters}"
                f"GROUP BY {', '.join(keys)}",
                {**_params(live, slack, **extra), "secs": float(win.seconds)}):
            row.update(_NO_CALLS)
            _merge(merged, tuple(row[k] for k in keys), row)
    if calls and not dc and not datacenters and (state.has_calls or not resolved):
        for row in _call_rows(store, win, calls_split, catalog, svc=svc, instances=instances_of is not None):
            _merge(merged, tuple(row[k] for k in keys), row)
    rows = list(merged.values())
    rows.sort(key=lambda r: tuple(r[k] for k in keys))
    return rows


#: Summed values of a graph row: what TCP saw, its health, then what traces saw
#: (``handshake_hist``, a list, is added bucket by bucket beside them).
_VALUE_NAMES = ("open", "conn_rate", "fail_rate", "connects", "failures", "bytes",
                "handshakes", "handshake_us", "retransmits", "aborts",
                "calls", "call_rate", "call_errors", "call_us")
_NO_CALLS = {"calls": 0, "call_rate": 0.0, "call_errors": 0, "call_us": 0}
_NO_TCP = {"open": 0.0, "conn_rate": 0.0, "fail_rate": 0.0, "connects": 0, "failures": 0, "bytes": 0,
           "handshakes": 0, "handshake_us": 0, "retransmits": 0, "aborts": 0, "handshake_hist": []}


def _merge(merged: dict[tuple, dict[str, Any]], key: tuple, row: dict[str, Any]) -> None:
    have = merged.get(key)
    if have is None:
        merged[key] = row
    else:
        for value in _VALUE_NAMES:
            have[value] += row[value]
        have["handshake_hist"] = add_handshake_hists(have.get("handshake_hist") or [], row.get("handshake_hist") or [])


def _call_rows(store: Store, win: Window, split: int, catalog: CatalogIndex, *, svc: str | None,
               instances: bool) -> list[dict[str, Any]]:
    """Graph rows of the calls traces saw in the window: linked by the
    resolution stage up to ``split``, linked here from the spans after it."""
    sums: dict[tuple[str, str], list[int]] = {}
    if split > win.start:
        table = "resolved_calls_1h" if win.bucket == 3600 else "resolved_calls_1m"
        cond = " AND (caller = {svc:String} OR callee = {svc:String})" if svc is not None else ""
        for caller, callee, n, e, d in store.query(
                f"SELECT caller, callee, sum(calls), sum(errors), sum(duration_us) FROM {store.db}.{table} "
                f"WHERE ts >= toDateTime({{t0:UInt32}}, 'UTC') AND ts < toDateTime({{t1:UInt32}}, 'UTC'){cond} "
                f"GROUP BY caller, callee HAVING sum(n) > 0",
                {"t0": win.start, "t1": split, **({"svc": svc} if svc is not None else {})}):
            sums[(caller, callee)] = [n, e, d]
    if split < win.end:
        for (_minute, caller, callee), (n, e, d) in link_calls(spans_of_traces(store, split, win.end),
                                                                split, win.end).items():
            if svc is not None and svc not in (caller, callee):
                continue
            have = sums.setdefault((caller, callee), [0, 0, 0])
            have[0] += n
            have[1] += e
            have[2] += d
    secs = float(win.seconds)
    out = []
    for (caller, callee), (n, e, d) in sums.items():
        if n <= 0:
            continue
        row = {"s_kind": "service", "s_name": caller, "s_area": catalog.area(caller),
               "d_kind": "service", "d_name": callee, "d_area": catalog.area(callee),
               **_NO_TCP, "calls": n, "call_rate": n / secs, "call_errors": e, "call_us": d}
        if instances:
            row.update(s_inst="", d_inst="")
        out.append(row)
    return out


def service_exists(store: Store, name: str) -> bool:
    """Whether ``name`` is a node the graph can show: a catalog service or
    external, INTERNET, or anything a record, listener or trace span named."""
    if name == INTERNET:
        return True
    db, cv = store.db, version_sql(store.db)
    rows = store.query(
        f"SELECT (SELECT count() FROM {db}.catalog_services WHERE version = {cv} AND name = {{n:String}})"
        f" + (SELECT count() FROM {db}.catalog_externals WHERE version = {cv} AND name = {{n:String}})"
        f" + (SELECT count() FROM (SELECT 1 FROM {db}.edges_1h WHERE service = {{n:String}} LIMIT 1))"
        f" + (SELECT count() FROM (SELECT 1 FROM {db}.listener_spans WHERE service = {{n:String}} LIMIT 1))"
        f" + (SELECT count() FROM (SELECT 1 FROM {db}.resolved_calls_1h WHERE caller = {{n:String}}"
        f" OR callee = {{n:String}} LIMIT 1))"
        f" + (SELECT count() FROM (SELECT 1 FROM {db}.spans WHERE local_service = {{n:String}}"
        f" OR remote_service = {{n:String}} LIMIT 1))",
        {"n": name},
    )
    return bool(rows and rows[0][0])


# -- alerts ------------------------------------------------------------------

def firing_alerts(store: Store, at: int, service: str | None = None) -> list[dict[str, Any]]:
    """Alerts firing at ``at``.

    An alert fires at T when it started by T and its latest notification
    puts its end after T: a resolved alert's ``ends_at``, or a firing one's
    (none - stored as the epoch - while Alertmanager considers it ongoing,
    otherwise the time it expires).  The latest notification is used rather
    than the one received by T, so alerts replayed later still show at the
    time they happened: ``FINAL`` keeps the latest of each (fingerprint,
    start) - the table replaces by ``received_at`` - before the conditions,
    which are on columns outside its key, are applied (a third of the time
    of grouping with ``argMax``).
    """
    db = store.db
    cond = "AND service = {svc:String}" if service is not None else ""
    return store.query_dicts(
        f"""
        SELECT fingerprint, alertname, service, severity, summary,
               toString(l_starts) AS starts_at, toString(l_ends) AS ends_at, toString(l_status) AS status
        FROM (
          SELECT fingerprint, alertname, service, severity, summary, starts_at AS l_starts, ends_at AS l_ends,
                 status AS l_status
          FROM {db}.alerts FINAL
          WHERE starts_at <= toDateTime({{at:UInt32}}, 'UTC')
        )
        WHERE ((l_status = 'firing' AND (l_ends <= l_starts OR l_ends > toDateTime({{at:UInt32}}, 'UTC')))
               OR (l_status = 'resolved' AND l_ends > toDateTime({{at:UInt32}}, 'UTC')))
              {cond}
        ORDER BY service, alertname, fingerprint
        """,
        {"at": at, **({"svc": service} if service is not None else {})},
    )


# -- service summary ---------------------------------------------------------

def service_instances(store: Store, service: str, win: Window) -> list[dict[str, Any]]:
    """Instances of ``service`` active in the window: host, addresses, pids, containers."""
    db = store.db
    rng = "ts >= toDateTime({t0:UInt32}, 'UTC') AND ts < toDateTime({t1:UInt32}, 'UTC')"
    # Each table is grouped by instance first, so addresses are turned into
    # text once per distinct address rather than once per record.
    return store.query_dicts(
        f"""
        SELECT dc, host, pod, any(namespace) AS namespace,
               arraySort(arrayMap(a -> {ip_text("a")}, groupUniqArrayArray(host_ips))) AS host_ips,
               arraySort(arrayMap(a -> {ip_text("a")}, groupUniqArrayArray(ips))) AS ips,
               arraySort(groupUniqArrayArray(pids)) AS pids,
               arraySort(groupUniqArrayArray(containers)) AS containers,
               arraySort(groupUniqArrayArray(ports)) AS ports,
               toString(min(first)) AS first_seen, toString(max(last)) AS last_seen
        FROM (
          SELECT dc, host, pod, any(namespace) AS namespace,
                 groupUniqArrayIf(host_ip, host_ip != toIPv6('::')) AS host_ips,
                 groupUniqArray(local_ip) AS ips, groupUniqArray(pid) AS pids,
                 groupUniqArrayIf(container_id, container_id != '') AS containers,
                 groupUniqArrayIf(local_port, direction = 'inbound' AND local_port != 0) AS ports,
                 min(ts) AS first, max(ts) AS last
          FROM {db}.connections WHERE service = {{svc:String}} AND {rng}
          GROUP BY dc, host, pod
          UNION ALL
          SELECT dc, host, pod, any(namespace), [], groupUniqArray(ip), groupUniqArray(pid),
                 groupUniqArrayIf(container_id, container_id != ''), groupUniqArrayIf(port, port != 0),
                 min(ts), max(ts)
          FROM {db}.listeners WHERE service = {{svc:String}} AND {rng}
          GROUP BY dc, host, pod
        )
        GROUP BY dc, host, pod
        ORDER BY dc, host, pod
        LIMIT 1000
        """,
        {"svc": service, "t0": win.start, "t1": win.end},
    )


def service_seen(store: Store, service: str) -> dict[str, Any]:
    """First and last time anything was reported for ``service`` (whole retention)."""
    rows = store.query(
        f"SELECT toString(min(first_seen)), toString(max(last_seen)), count() FROM {store.db}.service_presence "
        f"WHERE service = {{svc:String}}", {"svc": service})
    if not rows or not rows[0][2]:
        return {"first_seen": None, "last_seen": None}
    return {"first_seen": rows[0][0], "last_seen": rows[0][1]}


# -- search and timeline -----------------------------------------------------

def search(store: Store, text: str, limit: int = 20, since: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Areas, services, instances and IPs whose name contains ``text`` (case-insensitive).

    Observed names (services, hosts, pods, addresses) come from the last day
    before ``since`` (default now) so that the search stays fast.
    """
    db, cv = store.db, version_sql(store.db)
    since = int(since if since is not None else time.time())
    p = {"q": text, "lim": limit, "t1": since, "t0": since - 86400}
    rng = "ts >= toDateTime({t0:UInt32}, 'UTC') AND ts < toDateTime({t1:UInt32}, 'UTC') + 3600"
    areas = store.query_dicts(
        f"SELECT name, title, kind FROM {db}.catalog_areas WHERE version = {cv} "
        f"AND (positionCaseInsensitiveUTF8(name, {{q:String}}) > 0 "
        f"OR positionCaseInsensitiveUTF8(title, {{q:String}}) > 0) ORDER BY name LIMIT {{lim:UInt32}}", p)
    services = store.query_dicts(
        f"""
        SELECT name, any(area) AS area FROM (
          SELECT name, area FROM {db}.catalog_services WHERE version = {cv}
            AND (positionCaseInsensitiveUTF8(name, {{q:String}}) > 0
                 OR positionCaseInsensitiveUTF8(title, {{q:String}}) > 0)
          UNION ALL
          SELECT DISTINCT toString(service) AS name, '' AS area FROM {db}.edges_1h
          WHERE {rng} AND positionCaseInsensitiveUTF8(service, {{q:String}}) > 0
          UNION ALL
          -- services only traces saw
          SELECT DISTINCT toString(arrayJoin([caller, callee])) AS name, '' AS area FROM {db}.resolved_calls_1h
          WHERE {rng} AND positionCaseInsensitiveUTF8(name, {{q:String}}) > 0
        ) GROUP BY name ORDER BY name LIMIT {{lim:UInt32}}""", p)
    instances = store.query_dicts(
        f"""
        SELECT if(pod != '', pod, toString(host)) AS name, toString(host) AS host, pod,
               toString(any(service)) AS service, toString(any(dc)) AS dc
        FROM {db}.listener_spans
        WHERE hour >= toDateTime({{t0:UInt32}}, 'UTC') AND hour <= toDateTime({{t1:UInt32}}, 'UTC')
          AND (positionCaseInsensitiveUTF8(host, {{q:String}}) > 0
               OR positionCaseInsensitiveUTF8(pod, {{q:String}}) > 0)
        GROUP BY host, pod ORDER BY name LIMIT {{lim:UInt32}}""", p)
    ips = store.query_dicts(
        f"""
        SELECT ip, toString(any(service)) AS service, toString(any(host)) AS host, any(pod) AS pod,
               toString(max(last_seen)) AS last_seen FROM (
          SELECT toString(ip) AS ip, service, host, pod, last_seen FROM {db}.listener_spans
          WHERE hour >= toDateTime({{t0:UInt32}}, 'UTC') AND hour <= toDateTime({{t1:UInt32}}, 'UTC')
            AND position(toString(ip), {{q:String}}) > 0
          UNION ALL
          SELECT toString(host_ip) AS ip, service, host, pod, max(ts) AS last_seen FROM {db}.edges_1h
          WHERE {rng} AND position(toString(host_ip), {{q:String}}) > 0
          GROUP BY ip, service, host, pod
        ) GROUP BY ip ORDER BY ip LIMIT {{lim:UInt32}}""", p)
    for row in ips:
        # Addresses are stored IPv4-mapped; show IPv4 the way people type it.
        if row["ip"].startswith("::ffff:") and "." in row["ip"]:
            row["ip"] = row["ip"][len("::ffff:"):]
    return {"areas": areas, "services": services, "instances": instances, "ips": ips}


def data_range(store: Store) -> tuple[int, int] | None:
    """First and last minute with records, as epoch seconds (None when empty)."""
    rows = store.query(
        f"SELECT count(), toUInt32(min(ts)), toUInt32(max(ts)) FROM {store.db}.edges_1h")
    if not rows or not rows[0][0]:
        return None
    first = int(rows[0][1])
    last_hour = int(rows[0][2])
    last = store.query(
        f"SELECT toUInt32(max(ts)) FROM {store.db}.edges_1m "
        f"WHERE ts >= toDateTime({{h:UInt32}}, 'UTC')", {"h": last_hour})
    return first, max(last_hour, int(last[0][0]) if last and last[0][0] else last_hour) + 60


def timeline(store: Store, start: int, end: int, bucket: int) -> dict[str, list[dict[str, Any]]]:
    """Activity per bucket of ``[start, end)`` and the alerts that started in it."""
    db = store.db
    table = f"{db}.edges_1h" if bucket >= 3600 else f"{db}.edges_1m"
    p = {"t0": start, "t1": end, "b": bucket}
    buckets = store.query_dicts(
        f"""
        SELECT toString(toStartOfInterval(ts, toIntervalSecond({{b:UInt32}}))) AS bucket,
               sum(connects) AS connects, sum(failures) AS failures,
               sum(open_seconds) / {{b:UInt32}} AS open
        FROM {table}
        WHERE direction = 'outbound' AND ts >= toDateTime({{t0:UInt32}}, 'UTC')
          AND ts < toDateTime({{t1:UInt32}}, 'UTC')
        GROUP BY bucket ORDER BY bucket""", p)
    incidents = store.query_dicts(
        f"""
        SELECT fingerprint, l_alertname AS alertname, l_service AS service, l_severity AS severity,
               toString(l_starts) AS starts_at, toString(l_ends) AS ends_at, toString(l_status) AS status
        FROM (
          SELECT fingerprint, starts_at AS l_starts, argMax(alertname, received_at) AS l_alertname,
                 argMax(service, received_at) AS l_service, argMax(severity, received_at) AS l_severity,
                 argMax(ends_at, received_at) AS l_ends, argMax(status, received_at) AS l_status
          FROM {db}.alerts
          WHERE starts_at >= toDateTime({{t0:UInt32}}, 'UTC') AND starts_at < toDateTime({{t1:UInt32}}, 'UTC')
          GROUP BY fingerprint, starts_at
        ) ORDER BY l_starts, fingerprint LIMIT 1000""", p)
    return {"buckets": buckets, "incidents": incidents}


def ping(store: Store) -> bool:
    """Whether the store answers and holds the schema."""
    return store.schema_version() > 0
